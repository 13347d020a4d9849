"""`train --auto-layer`: pick the blocks to RL-train from a ranking (read from a file, or probed now on the same
in-memory model, which the probe leaves bit-identical) and train only those. The ranking must be of this model
(its fingerprint), and the run dir keeps the ranking it used (`ranking.json`), which a resumed run reuses.
With `verify=K`, a short single-block run on each of the ranking's top K blocks comes first (OUT/verify/layer-k,
all scored on the base's held-out prompts), and the main run trains the block whose held-out gain is clearly
the best: K short runs instead of the L+1 full ones of a ground-truth sweep.
Cost: one probe (if no ranking file), K * verify_steps GRPO steps and K evals with `verify`, plus the RL run."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from .errors import LayerscoutError
from .ranking import LayerRanking

RANKING = "ranking.json"
VERIFY = "verify"              # OUT/verify/: verify.json (settings, then the result) and layer-k/ per candidate
VERIFY_FILE = "verify.json"
VERIFY_FRACTION = 0.25         # default verify_steps = this share of max_steps (at least 1)
MARGIN_SE = 2.0                # a candidate must beat the predicted top by this many paired SE to replace it
log = logging.getLogger(__name__)


def check_ranking_fits(ranking: LayerRanking, model, force: bool = False) -> str | None:
    """A ranking made for another model must not pick blocks for this one: another depth is always an error,
    another fingerprint (or none recorded) an error unless `force`, which returns the note to record."""
    from .models import model_name, num_layers
    from .records import fingerprint_mismatch, model_fingerprint

    depth = num_layers(model)
    if len(ranking.layers) != depth:
        raise LayerscoutError(f"the ranking is for {ranking.model} with {len(ranking.layers)} layers; "
                              f"{model_name(model)} has {depth}")
    why = fingerprint_mismatch(ranking.model_fingerprint, model_fingerprint(model))
    if why is None:
        return None
    message = f"the ranking was made on {ranking.model}, not on {model_name(model)}: {why}"
    if not force:
        raise LayerscoutError(f"{message}; rank this model, or pass --force to use the ranking anyway")
    log.warning("%s; used anyway (--force)", message)
    return f"forced: {message}"


def train_auto(model: str | None, task: str = "math", *, top_k: int = 1, ranking: str | Path | None = None,
               config=None, output_dir: str | Path = "runs/auto", resume: bool = False, seed: int | None = None,
               device: str = "auto", dtype: str = "auto", progress: bool = True, force: bool = False,
               overrides: list[str] = (), verify: int | None = None, verify_steps: int | None = None,
               margin_se: float = MARGIN_SE) -> dict:
    """Rank (or read `ranking`), then train only the top_k blocks. Returns the run record plus the ranking used.
    `task` is a recipe or task name with recipe `overrides` (recipes.task_spec). A resumed run reuses the
    ranking kept in its dir. `force` uses a ranking of another model (recorded).

    `verify=K` first runs `verify_steps` steps (default VERIFY_FRACTION of max_steps) on each of the top K blocks
    alone, with the same RL settings, and trains the one with the highest held-out gain; the predicted top is
    kept unless a candidate beats it by more than `margin_se` paired standard errors. With top_k > 1 the main
    run trains the pick plus the ranking's next top_k - 1 blocks. The record's `verify` section holds each
    candidate's gain ± paired SE, the pick, `matched_prediction` and the cost against the main run. A resumed
    run skips the candidates that finished.

    >>> train_auto(None, "math", top_k=2, output_dir="runs/auto")["layers"]   # doctest: +SKIP
    >>> train_auto(None, "math", verify=3, output_dir="runs/v3")["verify"]["pick"]   # doctest: +SKIP
    """
    from .config import ModelSpec, RLConfig
    from .models import num_layers
    from .precision import model_precision
    from .probe import run_probe
    from .recipes import build_task, load_recipe
    from .records import write_json
    from .training import check_output_dir, train_layers

    config = config or RLConfig()
    settings = verify_settings(verify, verify_steps, margin_se, config)
    recipe = load_recipe(task, list(overrides) + ([f"seed={seed}"] if seed is not None else []))
    task_obj = build_task(recipe)
    out = check_output_dir(output_dir, resume)
    _check_verify_dir(out, resume, settings)
    kept = out / RANKING
    given = ranking if ranking is not None else kept if resume and kept.exists() else None
    chosen = LayerRanking.load(given) if given is not None else None  # a bad file fails before the model loads
    base = _BaseModel(ModelSpec(name_or_path=model, device=device, dtype=dtype), recipe.task)
    depth = num_layers(base.get()[0])
    if verify is not None and verify > depth:  # before the probe: a bad K fails now
        raise LayerscoutError(f"verify must be in 1..{depth} (the model's depth); got {verify}")
    if chosen is None:
        chosen = run_probe(*base.get(), task_obj, recipe.probe, progress=progress,
                           precision=model_precision(base.get()[0], dtype))
    override = check_ranking_fits(chosen, base.get()[0], force)
    task_obj = task_at_ranked_rung(task_obj, chosen)
    layers = chosen.top(top_k)
    if not (resume and kept.exists()):
        write_json(kept, chosen.to_dict())
    extra = {"ranking": chosen.to_dict(), "ranking_file": RANKING, "ranking_override": override}
    if settings is not None:
        extra["verify"] = _verify_phase(base, task_obj, chosen, config, settings, out, resume, progress)
        pick = extra["verify"]["pick"]
        layers = [pick] + [k for k in chosen.top(len(chosen.layers)) if k != pick][:top_k - 1]
    record = train_layers(base.get(), task_obj, layers, config, out, resume=resume, progress=progress,
                          extra_record=extra)
    if settings is not None and not record.get("finished_before"):
        _add_main_cost(record, out)
    return record


def task_at_ranked_rung(task, ranking: LayerRanking):
    """The task at the difficulty rung the probe chose (ranking.rollouts["rung"]) when its ladder is left on auto:
    the rung where this model's groups disagree is where RL has signal, and rung 0 may be one it always solves."""
    rung = ranking.rollouts.get("rung")
    for name, rung_task in task.ladder():
        if name == rung:
            log.info("training on rung %s, the one the ranking's pass-rate estimate chose", name)
            return rung_task
    return task


# ---------------------------------------------------------------- verify: K short single-block runs

def verify_settings(verify: int | None, verify_steps: int | None, margin_se: float, config) -> dict | None:
    """The verify phase's settings (None without `verify`), checked before any model loads."""
    if verify is None:
        if verify_steps is not None:
            raise LayerscoutError("verify_steps only applies with verify")
        return None
    if verify < 1:
        raise LayerscoutError(f"verify must be >= 1 (blocks to try); got {verify}")
    steps = max(1, round(config.max_steps * VERIFY_FRACTION)) if verify_steps is None else verify_steps
    if not 1 <= steps <= config.max_steps:
        raise LayerscoutError(f"verify_steps must be in 1..{config.max_steps} (the main run's max_steps); got {steps}")
    if config.eval_prompts < 2:
        raise LayerscoutError(f"verify compares held-out gains prompt by prompt: eval_prompts must be >= 2; "
                              f"got {config.eval_prompts}")
    if margin_se < 0:
        raise LayerscoutError(f"margin_se must be >= 0; got {margin_se}")
    return {"verify": verify, "verify_steps": steps, "margin_se": margin_se}


def _check_verify_dir(out: Path, resume: bool, settings: dict | None) -> None:
    """Before any model loads: a dir holding a verify phase is resumed with the same verify settings only, and a
    run started without one is not resumed with one."""
    from .training import RUN_CONFIG

    path = out / VERIFY / VERIFY_FILE
    stored = json.loads(path.read_text()) if path.exists() else None  # written atomically
    if not resume:
        if (out / VERIFY).exists():
            raise LayerscoutError(f"{out} already holds a verify phase ({VERIFY}/); resume it (--resume) or pick a "
                                  "new output dir")
        return
    if stored is None and settings is not None and (out / RUN_CONFIG).exists():
        raise LayerscoutError(f"{out} holds a run without a verify phase; resume it without --verify")
    if stored is not None and stored["settings"] != settings:
        was = ", ".join(f"{k} {v}" for k, v in stored["settings"].items())
        raise LayerscoutError(f"{out} holds a run with another verify phase ({was}); resume with the same "
                              "--verify and --verify-steps, or pick a new output dir")


class _BaseModel:
    """The base (model, tokenizer) for each run: the one in memory while no run has trained it, else a fresh load
    once the trained one is freed. Callers hold no reference of their own, so a trained model can go."""

    def __init__(self, spec, task: str) -> None:
        self.spec, self.task, self.pair = spec, task, None

    def get(self):
        if self.pair is None:
            _free_memory()
            from .models import load_model

            self.pair = load_model(self.spec, task=self.task)
        return self.pair

    def trained(self) -> None:
        self.pair = None


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _verify_phase(base: _BaseModel, task, ranking: LayerRanking, config, settings: dict, out: Path, resume: bool,
                  progress: bool) -> dict:
    """One short single-block run per candidate (the ranking's top K, in order), each from the base model, into
    OUT/verify/layer-k. They share the main run's base eval (OUT/base_eval.json), so every score is on the same
    prompts. A finished candidate is not rerun on resume. Each keeps its report and its layer delta (`layerscout
    apply` rebuilds its model); its checkpoints go once it finishes. Returns the record's `verify` section (verify_summary + cost)."""
    import dataclasses
    import shutil

    from .records import write_json
    from .training import BASE_EVAL, CARD, is_main_process, train_layers, wait_for_everyone

    candidates = ranking.top(settings["verify"])
    short = dataclasses.replace(config, max_steps=settings["verify_steps"])
    if is_main_process():
        write_json(out / VERIFY / VERIFY_FILE, {"settings": settings, "candidates": candidates})
    runs = []
    for i, k in enumerate(candidates):
        if progress:
            print(f"verify: block {k} (candidate {i + 1} of {len(candidates)}), {short.max_steps} steps",
                  file=sys.stderr)
        run_dir = out / VERIFY / f"layer-{k}"
        run = train_layers(base.get(), task, [k], short, run_dir, resume=resume, progress=progress,
                           base_eval_cache=out / BASE_EVAL, save_model=False)
        if not run.get("finished_before"):
            base.trained()
        if is_main_process():  # only for resuming, or of a model that is not kept (TRL's card)
            for path in [*run_dir.glob("checkpoint-*"), run_dir / "reference"]:
                shutil.rmtree(path, ignore_errors=True)
            (run_dir / CARD).unlink(missing_ok=True)
        wait_for_everyone()
        runs.append(run)
    if any(r["final_eval"]["ids"] != runs[0]["base_eval"]["ids"] for r in runs):
        raise LayerscoutError("the verify runs were scored on different held-out prompts; rerun into a new output dir")
    section = verify_summary(candidates, runs[0]["base_eval"]["per_prompt"],
                             [r["final_eval"]["per_prompt"] for r in runs], settings["margin_se"])
    for row, run in zip(section["candidates"], runs):
        row.update(final_score=run["final_score"], steps=run["steps"], seconds=run["wall_seconds"],
                   run_dir=str(Path(VERIFY) / f"layer-{row['layer']}"))
    seconds = sum(r["wall_seconds"] for r in runs)
    section.update(settings, cost={
        "verify_steps": sum(r["steps"] for r in runs), "verify_seconds": round(seconds, 3),
        "main_steps": config.max_steps, "main_seconds": None, "steps_ratio": sum(r["steps"] for r in runs) /
        config.max_steps, "seconds_ratio": None})
    if progress:
        print(f"verify: {section['reason']}", file=sys.stderr)
    if is_main_process():
        write_json(out / VERIFY / VERIFY_FILE, {"settings": settings, "candidates": candidates, "result": section})
    return section


def _add_main_cost(record: dict, out: Path) -> None:
    """The main run's wall time next to the verify phase's (known only once it ran): into the record and its
    train_report.json."""
    from .records import write_json
    from .training import REPORT, is_main_process

    cost = record["verify"]["cost"]
    cost["main_seconds"] = record["wall_seconds"]
    cost["seconds_ratio"] = cost["verify_seconds"] / record["wall_seconds"] if record["wall_seconds"] else None
    if is_main_process():
        write_json(out / REPORT, record)


def verify_summary(layers: list[int], base, finals, margin_se: float = MARGIN_SE) -> dict:
    """Which of the candidate blocks `layers` (in the ranking's order) to train, from held-out rewards per prompt:
    `base` (n,) of the base model, `finals` K x (n,) of each candidate's short run, all on the same prompts.

    The predicted top (layers[0]) stays unless some candidate beats it by more than `margin_se` paired standard
    errors of their difference; then the one of those with the highest gain (ties: the ranking's order). Returns
    {"candidates": [{layer, predicted_rank, gain, se, vs_top, vs_top_se}], "predicted_top", "pick",
    "matched_prediction", "reason"}. Example: `verify_summary([4, 1], [0, 0, 0, 0], [[0, 0, 1, 0], [1, 1, 1, 1]])`
    picks 1 (it beats block 4 by 0.75 ± 0.25, 3 SE).
    """
    from .metrics import paired_gain

    rows = []
    for i, (k, final) in enumerate(zip(layers, finals)):
        gain, se = paired_gain(base, final)
        diff, diff_se = paired_gain(finals[0], final)
        rows.append({"layer": k, "predicted_rank": i + 1, "gain": gain, "se": se, "vs_top": diff, "vs_top_se": diff_se})
    better = [r for r in rows[1:] if r["vs_top"] > margin_se * r["vs_top_se"] and r["vs_top"] > 0]
    pick = max(better, key=lambda r: (r["gain"], -r["predicted_rank"])) if better else rows[0]
    top = rows[0]
    if pick is top:
        best = max(rows, key=lambda r: (r["gain"], -r["predicted_rank"]))
        reason = (f"kept the predicted top block {top['layer']} ({_gain(top)}): no candidate beat it by more than "
                  f"{margin_se:g} paired SE" + (f" (best: block {best['layer']}, {_gain(best)}, "
                                                  f"{best['vs_top']:+.3f} ± {best['vs_top_se']:.3f} over it)"
                                                  if best is not top else "")
                  if len(rows) > 1 else f"kept the only candidate, block {top['layer']} ({_gain(top)})")
    else:
        reason = (f"picked block {pick['layer']} (ranked #{pick['predicted_rank']}, {_gain(pick)}): it beat the "
                  f"predicted top block {top['layer']} ({_gain(top)}) by {pick['vs_top']:+.3f} ± "
                  f"{pick['vs_top_se']:.3f}, more than {margin_se:g} paired SE")
    return {"candidates": rows, "predicted_top": top["layer"], "pick": pick["layer"],
            "matched_prediction": pick is top, "reason": reason}


def _gain(row: dict) -> str:
    return f"gain {row['gain']:+.3f} ± {row['se']:.3f}"

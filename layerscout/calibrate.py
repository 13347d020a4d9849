"""Ground truth for the predictor: per seed, one full-parameter RL run plus one single-block run per scanned
layer (arXiv 2607.01232), merged into C(k) = (S_k - S_base) / (S_full - S_base). Every run is scored on the
same held-out prompts and keeps each prompt's reward, so gains get paired standard errors and C(k) a paired
bootstrap interval. Every run is an independent job that writes its own record atomically the moment it
finishes, so a sweep resumes after a kill, splits over Slurm array tasks (`shard`) or Ray, and `summarize`
merges whatever exists. Cost: (layers + 1) × seeds runs, fewer when a seed's full run gains too little.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ModelSpec, RLConfig, _f, apply_overrides, from_dict, load_yaml
from .errors import LayerscoutError
from .records import write_json

MANIFEST = "sweep.json"
SUMMARY = "contributions.json"
BASE_EVAL = "base_eval.json"
# Fields that change what a run produces: a sweep dir refuses a config that differs in any of them.
IDENTITY = ("model", "dtype", "task", "task_options", "algo", "steps", "rl")
# The command that runs exactly job j of n (the manifest carries the config).
JOB_COMMAND = "layerscout calibrate --config {manifest} --shard {j}/{n}"
# Seeds must share this many blocks before their agreement means anything (two blocks give only +-1): a sweep in
# progress reports none until then.
MIN_AGREEMENT_BLOCKS = 3
# Seed-to-seed Spearman of C at which a sweep's ranking is sharp truth (the calibration goal); also the bar for the
# truth's split-half agreement with itself.
SHARP_AGREEMENT = 0.7
RECORD_KEYS = ("job", "seed", "layers", "base_score", "final_score", "base_eval", "final_eval")
# Held-out scoring of every calibration run unless `rl` says otherwise: the same 512 prompts for every run and
# seed (eval_seed), 4 sampled completions each, so sharpening shows even where greedy decoding hides it.
EVAL_DEFAULTS = {"eval_prompts": 512, "eval_samples": 4, "eval_seed": 0}


@dataclass
class CalibrationConfig:
    """One ground-truth sweep. As in the paper, every run shares the RL settings (tune learning_rate on the
    full run only); `rl` holds any other RLConfig field. Defaults scan the default organism."""

    model: str | None = _f(None, "hub id, local model dir or .gguf file; None = the default organism")
    device: str = _f("auto", "where every run trains: auto | cpu | cuda | cuda:N")
    dtype: str = _f("auto", "weights' dtype of every run: auto (float32; bf16 autocast on CUDA) | float32 | bfloat16 "
                            "| float16; trained blocks are held in fp32 either way")
    task: str = _f("math", "probe recipe name or YAML path: its task, options and metadata.version")
    task_options: dict[str, Any] = _f({}, "override the recipe's task_options, e.g. {dataset: openai/gsm8k}")
    algo: str = _f("grpo", "loss_type of every run: grpo | dr_grpo | gigpo (multi-turn tasks)")
    layers: str = _f("all", "blocks to scan, one single-block run each: all, 0,4,8, 0-4, ::3")
    seeds: list[int] = _f([0, 1, 2], "seeds; each gets one full run and one run per scanned block")
    steps: int = _f(100, "GRPO steps of every run (RLConfig.max_steps)")
    rl: dict[str, Any] = _f({}, "other RLConfig fields, the same for every run. Defaults here: save_steps 0, "
                                "eval_prompts 512, eval_samples 4, eval_seed 0 (every run scored on the same prompts)")
    min_gain_se: float = _f(3.0, "a seed whose full run gains less than this many paired standard errors gets no "
                                 "single-block runs (0 = run them all)")
    output: str = _f("calibration/runs/default", "sweep dir: sweep.json, runs/<seed>/<job>.json, contributions.json")
    job_cpus: float = _f(1.0, "CPUs reserved per job under the Ray launcher")
    job_gpus: float = _f(0.0, "GPUs reserved per job under the Ray launcher")
    keep_runs: bool = _f(False, "keep each run's model dir (scratch/<seed>/<job>/) after its record is written")

    def __post_init__(self) -> None:
        fixed = sorted({"loss_type", "max_steps", "seed"} & set(self.rl))
        if fixed:
            raise LayerscoutError(f"rl sets {', '.join(fixed)}: use algo, steps and seeds instead")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise LayerscoutError(f"seeds must be a non-empty list without repeats; got {self.seeds}")
        if self.rl.get("eval_seed", 0) is None:
            raise LayerscoutError("rl.eval_seed must be an int: calibrate scores every run on the same prompts")
        if self.min_gain_se < 0:
            raise LayerscoutError(f"min_gain_se must be >= 0; got {self.min_gain_se}")
        self.rl_config(self.seeds[0])  # bad rl keys, types or values fail now, not after the first run
        ModelSpec(name_or_path=self.model, device=self.device, dtype=self.dtype)  # a bad dtype fails now too

    def rl_config(self, seed: int) -> RLConfig:
        """The RLConfig of every run of `seed`. Checkpoints are off unless `rl` asks: a killed run restarts."""
        return from_dict(RLConfig, {"save_steps": 0, **EVAL_DEFAULTS, **self.rl, "loss_type": self.algo,
                                    "max_steps": self.steps, "seed": seed}, source="rl")


def load_config(path: str | Path, overrides: list[str] = ()) -> CalibrationConfig:
    """A CalibrationConfig from a YAML file of its fields, or from a sweep's sweep.json; `key=value` overrides."""
    data = load_yaml(path)
    if Path(path).name == MANIFEST:
        data = data["config"]
    return from_dict(CalibrationConfig, apply_overrides(data, list(overrides)), source=str(path))


# ---------------------------------------------------------------- plan

def jobs(config: CalibrationConfig) -> list[dict]:
    """Every run of the sweep: every seed's full run first (the gates), then each seed's blocks, each with its
    record path and the shell command that runs exactly it (for Slurm, Ray or any scheduler). Writes
    DIR/sweep.json, which those commands read; a dir holding a sweep whose runs would differ (any IDENTITY
    field) is refused. The task and its options are checked here, so a bad one fails before any job starts.
    Example: `[j["command"] for j in jobs(CalibrationConfig(layers="0,4"))]`."""
    from .models import parse_layers
    from .recipes import build_task

    from .multiturn import check_supported

    recipe = _recipe(config)
    check_supported(build_task(recipe), config.rl_config(config.seeds[0]))
    out = Path(config.output)
    n_layers = _depth(config.model, recipe.task)
    blocks = [(f"layer-{k}", [k]) for k in parse_layers(config.layers, n_layers)]
    specs = [(seed, "full", None) for seed in config.seeds]
    specs += [(seed, name, layers) for seed in config.seeds for name, layers in blocks]
    manifest = out / MANIFEST
    planned = [{"index": j, "id": f"{seed}/{name}", "seed": seed, "name": name, "layers": layers,
                "record": str(out / "runs" / str(seed) / f"{name}.json"),
                "command": JOB_COMMAND.format(manifest=shlex.quote(str(manifest)), j=j, n=len(specs))}
               for j, (seed, name, layers) in enumerate(specs)]
    _write_manifest(manifest, config, n_layers, planned)
    return planned


def select_shard(planned: list[dict], shard: tuple[int, int] | None) -> list[dict]:
    """Job j belongs to shard (i, n) when j % n == i (Slurm: i = $SLURM_ARRAY_TASK_ID, n = its count)."""
    if shard is None:
        return planned
    i, n = _check_shard(*shard)
    return [job for job in planned if job["index"] % n == i]


def parse_shard(text: str) -> tuple[int, int]:
    """"3/8" -> (3, 8), as in `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise LayerscoutError(f"shard must look like i/n (e.g. 0/4); got {text!r}") from None
    return _check_shard(i, n)


def _check_shard(i: int, n: int) -> tuple[int, int]:
    if not 0 <= i < n:
        raise LayerscoutError(f"shard must be i/n with 0 <= i < n; got {i}/{n}")
    return i, n


def _depth(model: str | None, task: str) -> int:
    """Decoder blocks of `model` (None: `task`'s default organism), from config.json when there is one (no weights
    loaded)."""
    from .models import load_model, num_layers

    if model is None:
        from .organisms import default_organism_path, task_organism

        model = str(default_organism_path(task_organism(task)))
    if (Path(model) / "config.json").is_file():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model).get_text_config().num_hidden_layers
    return num_layers(load_model(model)[0])


def _write_manifest(path: Path, config: CalibrationConfig, n_layers: int, planned: list[dict]) -> None:
    new = {"config": dataclasses.asdict(config), "n_layers": n_layers, "jobs": planned}
    old = _read_json(path)
    if old is not None:
        # a field an older manifest lacks had its default then
        defaults = {f.name: f.default for f in dataclasses.fields(CalibrationConfig)}
        changed = [k for k in IDENTITY if old["config"].get(k, defaults[k]) != new["config"][k]]
        if changed:
            raise LayerscoutError(f"{path.parent} holds a sweep with a different {', '.join(changed)}; "
                                  f"choose another output dir")
    if old != json.loads(json.dumps(new)):
        write_json(path, new)


# ---------------------------------------------------------------- run

def run_calibration(config: CalibrationConfig, launcher: str = "local", shard: tuple[int, int] | None = None,
                    ray_address: str | None = None, progress: bool = True) -> dict:
    """Run this shard's unfinished jobs (all of them without `shard`), then merge every record in the dir.

    Full-parameter runs go first: they are each seed's gate. A seed whose full run gains under
    `min_gain_se` paired standard errors gets no single-block runs (its C would be noise over a small number)
    and the result says what to raise. A shard whose block jobs need another shard's full run waits for that
    record when it reaches that seed's blocks. `launcher="local"` runs jobs one after another in this process;
    `"ray"` submits them as Ray tasks with `job_cpus` / `job_gpus` (needs `pip install ray` and an output dir
    all workers share).
    Returns {"ran", "done_before", "skipped" (seed -> why), "summary"}. Example:
    `run_calibration(CalibrationConfig(seeds=[0], layers="::2", output="cal/tiny"), shard=(0, 4))`.
    """
    if launcher not in ("local", "ray"):
        raise LayerscoutError(f"launcher must be local or ray; got {launcher!r}")
    launch = _setup_launcher(config, launcher, ray_address, progress)
    planned = jobs(config)
    mine = select_shard(planned, shard)
    todo = _unfinished(config, mine)

    # phase 1: the full-parameter runs, each seed's gate
    full = [job for job in todo if job["layers"] is None]
    launch(full)()
    # phase 2: seed by seed, the single-block runs of every seed whose full run gained enough. A full run that
    # another shard still runs is waited for when its seed's turn comes, not before the other seeds' blocks.
    gates = {job["seed"]: job["record"] for job in planned if job["layers"] is None}
    blocks, skipped, waits = [], {}, []
    for seed in dict.fromkeys(job["seed"] for job in todo if job["layers"] is not None):
        why = _gate(config, seed, gates[seed], progress)
        if why:
            skipped[seed] = why
            continue
        seed_blocks = [job for job in todo if job["seed"] == seed and job["layers"] is not None]
        waits.append(launch(seed_blocks))
        blocks += seed_blocks
    for wait in waits:
        wait()

    ran = {job["id"] for job in full + blocks}
    return {"ran": [j["id"] for j in mine if j["id"] in ran],
            "done_before": [j["id"] for j in mine if j not in todo],
            "skipped": {str(seed): why for seed, why in skipped.items()}, "summary": summarize(config.output)}


def _setup_launcher(config: CalibrationConfig, launcher: str, ray_address: str | None, progress: bool):
    """A function that starts a list of jobs and returns one that waits for them: in this process the jobs
    run before it returns; as Ray tasks they run while the next seed's gate is read."""
    if launcher == "ray":
        ray = _import_ray()
        ray.init(address=ray_address, ignore_reinit_error=True)
        remote = ray.remote(num_cpus=config.job_cpus, num_gpus=config.job_gpus)(run_job)

        def submit(todo: list[dict]):
            refs = [remote.remote(config, job, False) for job in todo]
            return lambda: ray.get(refs)
        return submit

    def local(todo: list[dict]):
        for job in todo:
            if progress:
                print(f"calibrate: {job['id']} (job {job['index']})", file=sys.stderr)
            run_job(config, job, progress)
        return lambda: None
    return local


def _unfinished(config: CalibrationConfig, mine: list[dict]) -> list[dict]:
    """The jobs without a record. The scratch of finished ones goes: a run killed between writing its record
    and removing its scratch leaves it behind."""
    todo = [job for job in mine if read_record(job["record"]) is None]
    if not config.keep_runs:
        for job in mine:
            if job not in todo:
                shutil.rmtree(_scratch(config, job), ignore_errors=True)
    return todo


def _gate(config: CalibrationConfig, seed: int, record: str, progress: bool, poll_seconds: float = 10.0) -> str | None:
    """Why the seed gets no block runs (its full run gained under `min_gain_se` paired standard errors), else
    None. Waits for a full-run record another shard is still producing."""
    from .metrics import paired_gain

    full = read_record(record)
    if full is None and progress:
        print(f"calibrate: waiting for seed {seed}'s full run ({record}), run by another shard", file=sys.stderr)
    while full is None:
        time.sleep(poll_seconds)
        full = read_record(record)
    gain, se = paired_gain(full["base_eval"]["per_prompt"], full["final_eval"]["per_prompt"])
    if config.min_gain_se > 0 and not gain > config.min_gain_se * se:
        why = weak_gain_reason(gain, se, config.min_gain_se, full)
        if progress:
            print(f"calibrate: seed {seed}: {why}", file=sys.stderr)
        return why
    return None


def weak_gain_reason(gain: float, se: float, min_gain_se: float, full: dict | None = None) -> str:
    """Why a seed's single-block runs are not worth running, and what to raise. Given the full run's record, it
    also says when greedy scoring may hide a rise in train reward (SmolLM2 on chain_sum: greedy -0.8 paired SE,
    the same run scored on 4 samples per prompt +2.9; calibration/README.md)."""
    from .metrics import gain_z

    z = gain_z(gain, se)
    hint = (_greedy_hid_rise(full) if full else None) or ""
    return (f"the full run gained {gain:+.3f} = {z:.1f} paired standard errors (< min_gain_se {min_gain_se:g}), so "
            f"C would be mostly noise: raise steps or rl.learning_rate (tune it on the full run), or "
            f"rl.eval_prompts / rl.eval_samples for a smaller standard error{hint}")


def flat_blocks_reason(best_z: float, min_gain_se: float) -> str:
    """Why a seed's C is noise although its full run trained: no single block got going in the steps given
    (SmolLM2 math, seed 2: its first steps drew almost no reward, and its best block gained 2.5 paired SE)."""
    return (f"its best single-block run gained {best_z:.1f} paired standard errors (< min_gain_se {min_gain_se:g}), "
            f"so its C is mostly eval noise although its full run trained: a single block needs more steps to get "
            f"going (raise steps, or rl.prompts_per_step / rl.num_generations for more groups with a reward to "
            f"compare)")


def disagreement_reason(seed_agreement: float | None, split_half: dict) -> str | None:
    """Why the seeds' C vectors are not sharp truth (seed Spearman < SHARP_AGREEMENT), and what to raise, read off
    the split-half test, lifted to the full prompt set by Spearman-Brown (each half holds half the prompts): a
    ranking that would not hold from one prompt set to another within a seed drowns in eval noise; one that holds
    within each seed but not across seeds was trained differently by each seed, which more prompts cannot fix
    (SmolLM2 chain_sum: 0.93 within, 0.41 across). None when the seeds agree, or too few blocks are shared."""
    from .metrics import spearman_brown

    if seed_agreement is None or seed_agreement >= SHARP_AGREEMENT:
        return None
    within, across = split_half.get("same_seed"), split_half.get("across_seeds")
    head = f"the seeds' C agree at Spearman {seed_agreement:.2f} (< {SHARP_AGREEMENT:g}, not yet sharp truth)"
    if within is None:
        return f"{head}: raise steps (the blocks' differences grow) or add seeds"
    held = f"each seed's ranking holds at {within:.2f} from one half of its prompts to the other"
    whole = spearman_brown(within, 2)  # nan where the halves disagree
    if not whole >= SHARP_AGREEMENT:
        expected = f" ({whole:.2f} expected of the whole set)" if within >= 0 else ""
        return (f"{head}, and {held}{expected}: eval noise drowns the blocks' differences: raise rl.eval_prompts "
                f"(or rl.eval_samples) or steps")
    across = "n/a" if across is None else f"{across:.2f}"
    return (f"{head}, while {held} ({whole:.2f} expected of the whole set; across seeds {across}): the seeds "
            f"trained different profiles, which more prompts cannot fix: raise steps, or add seeds (their mean is more "
            f"reliable)")


def _greedy_hid_rise(full: dict) -> str | None:
    """'; its train reward rose ...' when a greedily scored full run's train reward rose (Welch p < 0.01)."""
    from .metrics import reward_rise

    if not full["final_eval"].get("greedy"):
        return None
    try:
        first, last, p = reward_rise([e["reward"] for e in full.get("reward_curve", [])])
    except LayerscoutError:  # too few steps to tell
        return None
    if p >= 0.01:
        return None
    return (f"; its train reward rose from {first:.3f} to {last:.3f} (first and last third of the steps) while "
            f"greedy decoding gained little: a policy that samples closer to its greedy answers gains only in sampled "
            f"scoring (rl.eval_samples 4)")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LayerscoutError("the ray launcher needs Ray: pip install 'layerscout[ray]'") from None
    return ray


def run_job(config: CalibrationConfig, job: dict, progress: bool = True) -> dict:
    """One run, then its record, written atomically to job["record"]. A killed run left no record: with
    checkpoints on (rl.save_steps > 0) it resumes from its last complete one (train_layers checks that the scratch
    holds this same run), else it starts again from a clean scratch dir. The base model is scored once per sweep
    (DIR/base_eval.json): every run is scored on the same prompts with the same settings."""
    from .recipes import build_task
    from .training import is_main_process, train_layers, wait_for_everyone

    recipe = _recipe(config)
    scratch = _scratch(config, job)
    rl = config.rl_config(job["seed"])
    wait_for_everyone()  # processes of an accelerate launch enter each job together
    if not rl.save_steps and is_main_process():
        shutil.rmtree(scratch, ignore_errors=True)
    wait_for_everyone()
    model = ModelSpec(name_or_path=config.model, device=config.device, dtype=config.dtype)
    run = train_layers(model, build_task(recipe), job["layers"], rl, scratch, resume=True, progress=progress,
                       base_eval_cache=Path(config.output) / BASE_EVAL)
    dropped = ("log_history", "output_dir", "delta")  # per-step logs: reward_curve keeps the reward
    record = {"job": job["id"], **{k: v for k, v in run.items() if k not in dropped},
              "recipe_version": recipe.version, "recipe": recipe.name, "job_command": job["command"],
              "run_dir": str(scratch) if config.keep_runs else None, "calibration": dataclasses.asdict(config)}
    if is_main_process():
        write_json(job["record"], record)
        if not config.keep_runs:
            shutil.rmtree(scratch)
    return record


def _scratch(config: CalibrationConfig, job: dict) -> Path:
    return Path(config.output) / "scratch" / str(job["seed"]) / job["name"]


def _recipe(config: CalibrationConfig):
    """The probe recipe `config.task` with `config.task_options` applied: the same task `layerscout rank` uses."""
    from .recipes import load_recipe

    return load_recipe(config.task, [f"task_options.{k}={json.dumps(v)}" for k, v in config.task_options.items()])


# ---------------------------------------------------------------- merge

def read_record(path: str | Path) -> dict | None:
    """A finished run's record; None when absent, or unreadable (warned, then treated as not run)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(f"skipping corrupted record {path}: {e}", stacklevel=2)
        return None
    missing = [k for k in RECORD_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        warnings.warn(f"skipping corrupted record {path}: no {', '.join(missing)}", stacklevel=2)
        return None
    return record


def summarize(directory: str | Path, write: bool = True, n_boot: int = 1000) -> dict:
    """Merge every readable record under DIR/runs into C(k) per block and seed (contributions()); written to
    DIR/contributions.json unless write=False. Corrupted records are warned about and skipped; jobs without a
    record are listed in `missing`."""
    directory = Path(directory)
    manifest = _read_json(directory / MANIFEST)
    records = [r for p in sorted(directory.glob("runs/*/*.json")) if (r := read_record(p)) is not None]
    if manifest is None and not records:
        raise LayerscoutError(f"{directory} holds no calibration sweep (no {MANIFEST}, no runs/*/*.json)")
    planned = manifest["jobs"] if manifest else _implied_jobs(records)
    min_gain_se = manifest["config"].get("min_gain_se", 3.0) if manifest else 3.0
    summary = contributions(records, planned, min_gain_se=min_gain_se, n_boot=n_boot)
    if not records:
        summary.update(model=manifest["config"]["model"], task=manifest["config"]["task"],
                       algo=manifest["config"]["algo"], n_layers=manifest["n_layers"])
    summary["directory"] = str(directory)
    if write:
        write_json(directory / SUMMARY, summary)
    return summary


def _implied_jobs(records: list[dict]) -> list[dict]:
    """Without a manifest, the records' seeds times (full + every block) are expected."""
    n = records[0]["num_layers"]
    return [{"id": f"{seed}/{name}", "seed": seed, "layers": layers}
            for seed in sorted({r["seed"] for r in records})
            for name, layers in [("full", None)] + [(f"layer-{k}", [k]) for k in range(n)]]


def contributions(records: list[dict], planned: list[dict], min_gain_se: float = 3.0, n_boot: int = 1000) -> dict:
    """C(k) per seed, its mean over seeds with a paired-bootstrap interval, and how far the truth can be trusted
    (pure). `planned`: the job dicts expected (id, seed, layers), which fix the blocks and seeds reported and what
    counts as missing. Every run must have been scored on the same prompts (per-prompt rewards in base_eval /
    final_eval); a seed whose runs were not is undefined, as is one whose full run did not beat the base.

    Per sweep: `model_fingerprint` (records.model_fingerprint of the base model, from the first record; `validate`
    refuses a ranking made on other weights); `gain` per seed (S_full - S_base, its paired SE and their ratio z);
    `weak_seeds` (z < min_gain_se); `block_gain_z` per seed (the median and best paired gain of its single-block
    runs, in SE) and `flat_seeds` (none of its blocks gained min_gain_se: its C is eval noise even though its full
    run trained); `seed_spearman` (mean pairwise Spearman of C between seeds: the single-seed reliability),
    `reliability` (its Spearman-Brown value for the mean over the seeds) and `noise_ceiling` (sqrt of that: the best
    Spearman a predictor can expect against the mean C); `split_half` (whether the ranking replicates on other
    prompts: C on the even-numbered prompts against C on the odd ones, `same_seed` and `across_seeds`);
    `disagreement` (disagreement_reason: why the seeds disagree and what to raise, None when they agree); `priors`
    (the free rankings' Spearman).
    """
    import numpy as np

    from .metrics import (gain_z, layer_contribution, noise_ceiling, paired_bootstrap_contribution, paired_gain,
                          paired_z, prompt_split_agreement, seed_spearman, spearman_brown)

    by_id = {r["job"]: r for r in records}
    seeds = sorted({j["seed"] for j in planned} | {r["seed"] for r in records})
    blocks = sorted({j["layers"][0] for j in planned if j["layers"]} |
                    {r["layers"][0] for r in records if r["layers"]})
    ids = records[0]["base_eval"]["ids"] if records else []
    s_base, s_full, gains, undefined, weak, flat, block_z, c, rewards = {}, {}, {}, {}, {}, {}, {}, {}, {}
    for seed in seeds:
        runs = {r["job"].split("/", 1)[1]: r for r in records if r["seed"] == seed}
        if runs:
            s_base[str(seed)] = next(iter(runs.values()))["base_score"]
        if any(_eval_ids(r) != ids for r in runs.values()):
            undefined[str(seed)] = ("its runs were scored on other held-out prompts than the sweep's first record: "
                                    "the model or eval settings changed between runs")
            continue
        if any(r["base_eval"]["per_prompt"] != records[0]["base_eval"]["per_prompt"] for r in runs.values()):
            undefined[str(seed)] = "its runs' base scores disagree: the model or eval settings changed between runs"
            continue
        if "full" not in runs:
            undefined[str(seed)] = "no record of the full run yet"
            continue
        base, full = runs["full"]["base_eval"]["per_prompt"], runs["full"]["final_eval"]["per_prompt"]
        s_full[str(seed)] = runs["full"]["final_score"]
        gain, se = paired_gain(base, full)
        gains[str(seed)] = {"gain": gain, "se": se, "z": _finite(gain_z(gain, se))}
        scores = {k: runs[f"layer-{k}"]["final_score"] for k in blocks if f"layer-{k}" in runs}
        try:
            c[seed] = dict(zip(scores, layer_contribution(list(scores.values()), s_base[str(seed)],
                                                          s_full[str(seed)])))
        except LayerscoutError as e:
            undefined[str(seed)] = str(e)
            continue
        if min_gain_se > 0 and not gain > min_gain_se * se:
            weak[str(seed)] = weak_gain_reason(gain, se, min_gain_se, runs["full"])
        if not scores:  # e.g. gated as weak: no C, and no place in the seed agreement
            del c[seed]
            undefined[str(seed)] = "no single-block run recorded"
            continue
        rewards[seed] = (base, full, [runs[f"layer-{k}"]["final_eval"]["per_prompt"] if f"layer-{k}" in runs
                                      else [np.nan] * len(base) for k in blocks])
        z = [paired_z(base, runs[f"layer-{k}"]["final_eval"]["per_prompt"]) for k in scores]
        best = max(z)
        block_z[str(seed)] = {"median": _finite(np.median(z)), "best": _finite(best)}
        if min_gain_se > 0 and best < min_gain_se:
            flat[str(seed)] = flat_blocks_reason(best, min_gain_se)
    paired = [np.array([rewards[s][i] for s in rewards]) for i in range(3)]
    low, high = (paired_bootstrap_contribution(*paired, n=n_boot) if rewards and blocks
                 else ([None] * len(blocks),) * 2)
    within, across = prompt_split_agreement(*paired) if rewards and blocks else (None, None)
    layers = []
    for i, k in enumerate(blocks):
        per_seed = {str(s): float(c[s][k]) for s in c if k in c[s]}
        values = list(per_seed.values())
        layers.append({
            "index": k,
            "contribution": float(np.mean(values)) if values else None,
            "ci": [_finite(low[i]), _finite(high[i])] if values else [None, None],
            "spread": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "per_seed": per_seed,
            "score": {str(r["seed"]): r["final_score"] for r in records if r["layers"] == [k]},
        })
    first = records[0] if records else {}
    common = [k for k in blocks if all(k in c[s] for s in c)]  # blocks every defined seed has a C for
    agreement = (_finite(seed_spearman([[c[s][k] for k in common] for s in c]))
                 if len(common) >= MIN_AGREEMENT_BLOCKS else None)
    split_half = {"same_seed": _finite(within), "across_seeds": _finite(across)}
    return {
        "model": first.get("model"), "model_fingerprint": first.get("model_fingerprint"), "task": first.get("task"),
        "task_versions": sorted({r["task_version"] for r in records if "task_version" in r}),
        "algo": first.get("algo"), "n_layers": first.get("num_layers"), "steps": first.get("steps"),
        "eval": _eval_settings(first), "constant_answer": first.get("base_eval", {}).get("constant_answer"),
        "seeds": seeds, "s_base": s_base, "s_full": s_full, "gain": gains,
        "undefined_seeds": undefined, "weak_seeds": weak, "min_gain_se": min_gain_se, "block_gain_z": block_z,
        "flat_seeds": flat, "layers": layers,
        "seed_spearman": agreement, "agreement_blocks": len(common),
        "reliability": _finite(spearman_brown(agreement, len(c))) if agreement is not None else None,
        "noise_ceiling": _finite(noise_ceiling(agreement, len(c))) if agreement is not None else None,
        "split_half": split_half, "disagreement": disagreement_reason(agreement, split_half),
        "priors": _prior_agreement(layers, first.get("num_layers")),
        "missing": [j["id"] for j in planned if j["id"] not in by_id],
        "records": len(records),
    }


def _eval_ids(record: dict) -> list[str]:
    ids = record["base_eval"]["ids"]
    return ids if record["final_eval"]["ids"] == ids else []


def _eval_settings(record: dict) -> dict | None:
    ev = record.get("final_eval")
    return {k: ev[k] for k in ("n", "num_samples", "greedy")} if ev else None


def _prior_agreement(layers: list[dict], n_layers: int | None) -> dict:
    """Spearman of the free rankings (middle of the stack, shallower first) against the mean C."""
    import numpy as np

    from .metrics import spearman
    from .signals.baselines import depth_prior

    defined = [x for x in layers if x["contribution"] is not None]
    if len(defined) < 2 or not n_layers:
        return {}
    k = np.array([x["index"] for x in defined])
    c = [x["contribution"] for x in defined]
    return {"depth_prior": _finite(spearman(depth_prior(n_layers)[k], c)),
            "shallower_first": _finite(spearman(-k, c))}


def _finite(x) -> float | None:
    import math

    return None if x is None or not math.isfinite(x) else float(x)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None

"""`train --auto-layer`: pick the blocks to RL-train from a ranking (read from a file, or probed now on the same
in-memory model, which the probe leaves bit-identical) and train only those. The ranking must be of this model
(its fingerprint), and the run dir keeps the ranking it used (`ranking.json`), which a resumed run reuses.
Cost: one probe (if no ranking file) plus the RL run."""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import LayerscoutError
from .ranking import LayerRanking

RANKING = "ranking.json"
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
               overrides: list[str] = ()) -> dict:
    """Rank (or read `ranking`), then train only the top_k blocks. Returns the run record plus the ranking used.
    `task` is a recipe or task name with recipe `overrides` (recipes.task_spec). A resumed run reuses the
    ranking kept in its dir. `force` uses a ranking of another model (recorded).

    >>> train_auto(None, "math", top_k=2, output_dir="runs/auto")["layers"]   # doctest: +SKIP
    """
    from .config import ModelSpec
    from .models import load_model
    from .probe import run_probe
    from .recipes import build_task, load_recipe
    from .records import write_json
    from .training import check_output_dir, train_layers

    recipe = load_recipe(task, list(overrides) + ([f"seed={seed}"] if seed is not None else []))
    task_obj = build_task(recipe)
    out = check_output_dir(output_dir, resume)
    kept = out / RANKING
    given = ranking if ranking is not None else kept if resume and kept.exists() else None
    chosen = LayerRanking.load(given) if given is not None else None  # a bad file fails before the model loads
    pair = load_model(ModelSpec(name_or_path=model, device=device, dtype=dtype), task=recipe.task)
    if chosen is None:
        chosen = run_probe(*pair, task_obj, recipe.probe, progress=progress)
    override = check_ranking_fits(chosen, pair[0], force)
    layers = chosen.top(top_k)
    if not (resume and kept.exists()):
        write_json(kept, chosen.to_dict())
    extra = {"ranking": chosen.to_dict(), "ranking_file": RANKING, "ranking_override": override}
    return train_layers(pair, task_obj, layers, config, out, resume=resume, progress=progress, extra_record=extra)

"""`train --auto-layer`: pick the blocks to RL-train from a ranking (read from a file, or probed now on the same
in-memory model, which the probe leaves bit-identical) and train only those. Cost: one probe (if no ranking
file) plus the RL run."""

from __future__ import annotations

import warnings
from pathlib import Path

from .errors import LayerscoutError
from .ranking import LayerRanking


def check_ranking_fits(ranking: LayerRanking, model) -> None:
    """A ranking made for another depth (or another model) must not pick blocks for this one."""
    from .models import model_name, num_layers

    depth = num_layers(model)
    if len(ranking.layers) != depth:
        raise LayerscoutError(f"the ranking is for {ranking.model} with {len(ranking.layers)} layers; "
                              f"{model_name(model)} has {depth}")
    if ranking.model != model_name(model):
        warnings.warn(f"the ranking was made for {ranking.model}; training {model_name(model)}", stacklevel=2)


def train_auto(model: str | None, task: str = "math", *, top_k: int = 1, ranking: str | Path | None = None,
               config=None, output_dir: str | Path = "runs/auto", resume: bool = False, seed: int | None = None,
               device: str = "auto", dtype: str = "auto", progress: bool = True) -> dict:
    """Rank (or read `ranking`), then train only the top_k blocks. Returns the run record plus the ranking used.

    >>> train_auto(None, "math", top_k=2, output_dir="runs/auto")["layers"]   # doctest: +SKIP
    """
    from .config import ModelSpec
    from .models import load_model
    from .probe import run_probe
    from .recipes import build_task, load_recipe
    from .training import train_layers

    recipe = load_recipe(task, [f"seed={seed}"] if seed is not None else [])
    task_obj = build_task(recipe)
    pair = load_model(ModelSpec(name_or_path=model, device=device, dtype=dtype), task=recipe.task)
    if ranking is not None:
        chosen = LayerRanking.load(ranking)
    else:
        chosen = run_probe(*pair, task_obj, recipe.probe, progress=progress)
    check_ranking_fits(chosen, pair[0])
    layers = chosen.top(top_k)
    record = train_layers(pair, task_obj, layers, config, output_dir, resume=resume, progress=progress)
    return {**record, "ranking": chosen.to_dict()}

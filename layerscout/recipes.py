"""Probe recipes: one YAML per task in probes/ (shipped with the package) or any user file, keyed by a unique
`task` name and carrying `metadata.version`. A recipe becomes (task name, task options, ProbeConfig)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from .config import ProbeConfig, apply_overrides, from_dict, load_yaml
from .errors import LayerscoutError

RECIPE_KEYS = {"task", "metadata", "task_options", "probe"}


def builtin_dir() -> Path:
    """probes/ of a source checkout, else the copy installed as package data (layerscout._probes)."""
    src = Path(__file__).resolve().parent.parent / "probes"
    if src.is_dir():
        return src
    from importlib.resources import files
    return Path(str(files("layerscout._probes")))


def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(builtin_dir().glob("*.yaml"))}


@dataclass
class Recipe:
    task: str
    version: int
    task_options: dict
    probe: ProbeConfig
    path: Path


def resolve(name_or_path: str) -> Path:
    """A built-in recipe name (`math`) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise LayerscoutError(f"no such recipe file: {path}")
        return path
    known = builtin_recipes()
    if name_or_path not in known:
        close = difflib.get_close_matches(name_or_path, known, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise LayerscoutError(f"Unknown probe recipe {name_or_path!r}.{hint} Available: {', '.join(known)}")
    return known[name_or_path]


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> Recipe:
    """Load and check a recipe; overrides are `key=value` on the probe section (`probe.` prefix optional) or
    `task_options.KEY=value`. Every bad key and type is reported at once."""
    path = resolve(name_or_path)
    data = load_yaml(path)
    data = apply_overrides(data, [o if o.split("=", 1)[0].split(".")[0] in RECIPE_KEYS else f"probe.{o}"
                                  for o in overrides])
    problems = [f"{path}: unknown key {k!r} (expected {', '.join(sorted(RECIPE_KEYS))})"
                for k in data if k not in RECIPE_KEYS]
    task = data.get("task")
    if not isinstance(task, str):
        problems.append(f"{path}: `task` must name a task, got {task!r}")
    version = (data.get("metadata") or {}).get("version")
    if not isinstance(version, int):
        problems.append(f"{path}: metadata.version must be an int, got {version!r}")
    options = data.get("task_options") or {}
    if not isinstance(options, dict):
        problems.append(f"{path}: task_options must be a mapping")
    probe = None
    try:
        probe = from_dict(ProbeConfig, data.get("probe") or {}, source=f"{path}: probe")
    except LayerscoutError as e:
        problems.append(f"{path}: {e}" if not str(e).startswith(str(path)) else str(e))
    if problems:
        raise LayerscoutError("; ".join(problems))
    return Recipe(task=task, version=version, task_options=options, probe=probe, path=path)


def build_task(recipe: Recipe):
    """The task object a recipe describes (unknown task names and options fail here)."""
    from .tasks import get_task
    return get_task(recipe.task, **recipe.task_options)

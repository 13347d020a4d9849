"""Probe recipes: one YAML per task in probes/ (shipped with the package) or any user file, keyed by a unique
`task` name and carrying `metadata.version`. A recipe becomes (task name, task options, ProbeConfig). A registered
task without a recipe file (`custom`, entry-point tasks) gets the default ProbeConfig and its task's version."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from .config import ProbeConfig, apply_overrides, from_dict, load_yaml
from .errors import LayerscoutError

RECIPE_KEYS = {"task", "metadata", "task_options", "probe"}


def builtin_dir() -> Path:
    """probes/ of a source checkout, else the copy a wheel installs as package data (layerscout/_probes/).
    Not importlib.resources: _probes has no __init__.py, and str() of a namespace package's files() is a repr."""
    here = Path(__file__).resolve().parent
    src = here.parent / "probes"
    return src if src.is_dir() else here / "_probes"


def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(builtin_dir().glob("*.yaml"))}


@dataclass
class Recipe:
    task: str
    version: int
    task_options: dict
    probe: ProbeConfig
    path: Path | None

    @property
    def name(self) -> str:
        """How records name this recipe: its built-in name, else a repo-relative path, never an absolute one."""
        from .records import portable_path

        if self.path is None:
            return self.task
        builtin = builtin_recipes().get(self.path.stem)
        if builtin is not None and builtin.resolve() == self.path.resolve():
            return self.path.stem
        return portable_path(self.path)


def resolve(name_or_path: str) -> Path | None:
    """A built-in recipe name (`math`) or a path to a YAML file; None for a registered task without a recipe."""
    from .tasks import list_tasks

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise LayerscoutError(f"no such recipe file: {path}")
        return path
    known = builtin_recipes()
    if name_or_path in known:
        return known[name_or_path]
    if name_or_path in list_tasks():
        return None
    names = sorted(set(known) | set(list_tasks()))
    close = difflib.get_close_matches(name_or_path, names, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise LayerscoutError(f"Unknown probe recipe or task {name_or_path!r}.{hint} Available: {', '.join(names)}")


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> Recipe:
    """Load and check a recipe; overrides are `key=value` on the probe section (`probe.` prefix optional) or
    `task_options.KEY=value`. Every bad key and type is reported at once."""
    from .tasks import task_class

    path = resolve(name_or_path)
    data = load_yaml(path) if path else \
        {"task": name_or_path, "metadata": {"version": task_class(name_or_path).version}}
    source = path or f"task {name_or_path}"
    data = apply_overrides(data, [o if o.split("=", 1)[0].split(".")[0] in RECIPE_KEYS else f"probe.{o}"
                                  for o in overrides])
    problems = [f"{source}: unknown key {k!r} (expected {', '.join(sorted(RECIPE_KEYS))})"
                for k in data if k not in RECIPE_KEYS]
    task = data.get("task")
    if not isinstance(task, str):
        problems.append(f"{source}: `task` must name a task, got {task!r}")
    version = (data.get("metadata") or {}).get("version")
    if not isinstance(version, int):
        problems.append(f"{source}: metadata.version must be an int, got {version!r}")
    options = data.get("task_options") or {}
    if not isinstance(options, dict):
        problems.append(f"{source}: task_options must be a mapping")
    probe = None
    try:
        probe = from_dict(ProbeConfig, data.get("probe") or {}, source=f"{source}: probe")
    except LayerscoutError as e:
        problems.append(f"{source}: {e}" if not str(e).startswith(str(source)) else str(e))
    if problems:
        raise LayerscoutError("; ".join(problems))
    return Recipe(task=task, version=version, task_options=options, probe=probe, path=path)


def build_task(recipe: Recipe):
    """The task object a recipe describes (unknown task names and options fail here)."""
    from .tasks import get_task
    return get_task(recipe.task, **recipe.task_options)


def task_spec(task: str | None = None, *, dataset: str | None = None, reward: str | None = None,
              prompt_column: str | None = None, question_column: str | None = None,
              answer_column: str | None = None) -> tuple[str, list[str]]:
    """(recipe name or path, overrides) behind every command's --task/--dataset/--reward flags, for
    `load_recipe(*task_spec(...))`. A reward makes the user's own task (`custom`) the default: --dataset FILE
    --reward module:function. Without one, --dataset feeds the recipe's own task (math reads question/answer
    columns). Example: `task_spec(dataset="qa.jsonl", reward="my_reward.py:score")`."""
    if reward is not None:
        options = {"dataset": dataset, "reward": reward, "prompt_column": prompt_column}
        if question_column or answer_column:
            raise LayerscoutError("--question-column/--answer-column are the math task's; with --reward use "
                                  "--prompt-column (every other column reaches the reward)")
        return task or "custom", [f"task_options.{k}={json.dumps(v)}" for k, v in options.items() if v is not None]
    if prompt_column:
        raise LayerscoutError("--prompt-column belongs to the custom task: give --reward module:function too")
    options = {"dataset": dataset, "source": "dataset" if dataset else None, "question_column": question_column,
               "answer_column": answer_column}
    return task or "math", [f"task_options.{k}={json.dumps(v)}" for k, v in options.items() if v is not None]

"""The user's own task, with no package edits: prompts from a dataset (a local .jsonl/.json/.parquet/.csv file or a
hub id) and a reward function with TRL's signature, `f(prompts, completions, **columns) -> list[float]`, named as
`module:function` or `path/to/file.py:function`. The same function works unchanged as a GRPOTrainer reward.

Each row's prompt column (a string, or a list of chat messages) becomes the conversational prompt; every other
column reaches the reward as a keyword, as in TRL. Train and held-out prompts are split by a hash of the prompt
text (`split_of`). Bad columns and rewards that raise or return the wrong shape, type or NaN are one-line errors.
Cost: the user's reward, plus one read of the dataset.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import json
import math
import random
import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import LayerscoutError
from . import register_task
from .base import Task, split_of

TRL_KEYWORDS = {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric"}


def load_reward(spec: str) -> Callable:
    """`package.module:function` or `path/to/file.py:function` -> the function (import errors are one line)."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise LayerscoutError(f"reward {spec!r} must look like module:function or path/to/file.py:function")
    try:
        if where.endswith(".py") or "/" in where:
            path = Path(where)
            if not path.is_file():
                raise LayerscoutError(f"reward {spec!r}: no such file {where}")
            module_name = f"layerscout_reward_{abs(hash(str(path.resolve())))}"
            loader = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[module_name] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except LayerscoutError:
        raise
    except Exception as e:  # the user's module: any import-time error is theirs to fix
        raise LayerscoutError(f"reward {spec!r}: importing {where} failed with {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise LayerscoutError(f"reward {spec!r}: {where} has no function {name!r}.{hint}")
    return fn


def check_rewards(values: Any, n: int, spec: str) -> list[float]:
    """One finite real number per completion, or a one-line error naming the reward and the first bad value."""
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):  # numpy array, torch tensor
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise LayerscoutError(f"reward {spec} returned {type(values).__name__}, not a list of floats (one per "
                              "completion)")
    if len(values) != n:
        raise LayerscoutError(f"reward {spec} returned {len(values)} values for {n} completions")
    out = []
    for i, v in enumerate(values):
        if hasattr(v, "item") and not isinstance(v, (bool, int, float)):
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise LayerscoutError(f"reward {spec} returned {v!r} ({type(v).__name__}) for completion {i}, "
                                  "not a float")
        if not math.isfinite(v):
            raise LayerscoutError(f"reward {spec} returned {v} for completion {i}; rewards must be finite")
        out.append(float(v))
    return out


def _text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


@register_task("custom")
class CustomTask(Task):
    """Options: dataset (local file or hub id), reward (module:function or file.py:function), prompt_column
    (default "prompt"), dataset_config (hub config name), system_prompt, version (bump it when you change the
    data or the reward: records carry it)."""

    options = {"dataset": None, "reward": None, "prompt_column": "prompt", "dataset_config": None,
               "system_prompt": None, "version": 1}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        c = self.config
        if not c["dataset"] or not c["reward"]:
            raise LayerscoutError("the custom task needs a dataset and a reward: --dataset FILE.jsonl "
                                  "--reward module:function (or path/to/file.py:function)")
        if not isinstance(c["version"], int) or isinstance(c["version"], bool):
            raise LayerscoutError(f"custom task: version must be an int; got {c['version']!r}")
        self.version = c["version"]
        self._fn = load_reward(c["reward"])
        self._rows: list[dict] | None = None
        self.reward_columns = ("question", *self._needed_columns())  # what `layerscout score` must supply
        self.rows()  # bad files and columns fail here, before any model is loaded

    def rows(self) -> list[dict]:
        """The dataset's rows, read once; the prompt column and the reward's named columns are checked here."""
        if self._rows is None:
            self._rows = self._read()
        return self._rows

    def _read(self) -> list[dict]:
        from .math import FILE_SUFFIXES, _load_hub, _read_file  # one reader for every file type and the hub

        src, col = str(self.config["dataset"]), self.config["prompt_column"]
        local = src.endswith(FILE_SUFFIXES) or Path(src).is_file()
        rows = _read_file(Path(src)) if local else _load_hub(src, self.config["dataset_config"])
        if not rows:
            raise LayerscoutError(f"empty dataset: {src} has no rows")
        columns = list(rows[0])
        if col not in columns:
            raise LayerscoutError(f"{src}: no prompt column {col!r}; columns: {', '.join(columns)} "
                                  "(set --prompt-column)")
        for i, row in enumerate(rows):
            prompt = row.get(col)
            if not (isinstance(prompt, str) and prompt.strip()) and not _is_messages(prompt):
                raise LayerscoutError(f"{src} row {i}: {col!r} must be a non-empty string or a list of chat "
                                      f"messages ({{role, content}}); got {prompt!r}")
            if set(row) != set(columns):
                raise LayerscoutError(f"{src} row {i}: columns {sorted(row)} differ from the first row's "
                                      f"{sorted(columns)}")
        missing = [c for c in self._needed_columns() if c not in columns or c == col]
        if missing:
            raise LayerscoutError(f"reward {self.config['reward']} takes column {', '.join(map(repr, missing))}, "
                                  f"which {src} lacks; columns: {', '.join(columns)}")
        return rows

    def _needed_columns(self) -> list[str]:
        """The reward function's required keyword parameters other than TRL's own: dataset columns it reads."""
        return [p.name for p in inspect.signature(self._fn).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
                and p.name not in TRL_KEYWORDS]

    def _split_rows(self, split: str, n: int, seed: int) -> list[dict]:
        """Up to n distinct-prompt rows of `split`, in a seeded order."""
        from .base import SPLITS

        if split not in SPLITS:
            raise LayerscoutError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        col = self.config["prompt_column"]
        seen, rows = set(), []
        for row in self.rows():
            key = _text(row[col])
            if key not in seen and split_of(key) == split:
                seen.add(key)
                rows.append(row)
        random.Random(seed).shuffle(rows)
        return rows[:n]

    def _examples(self, split: str, n: int, seed: int) -> list[dict]:
        """Items for `lookup` (`layerscout score`): id (the row's "id", else the prompt text), the prompt as
        "question", and every other column."""
        col = self.config["prompt_column"]
        return [{**{k: v for k, v in r.items() if k != col}, "id": str(r.get("id", _text(r[col]))),
                 "question": r[col]} for r in self._split_rows(split, n, seed)]

    def load_prompts(self, split: str, n: int, seed: int):
        """Up to `n` rows of `split` ("train" | "heldout"), seeded: "prompt" as chat messages, "id", and every
        other column."""
        import datasets

        col = self.config["prompt_column"]
        rows = self._split_rows(split, n, seed)
        if not rows:
            raise LayerscoutError(f"empty dataset: {self.config['dataset']} has no {split} rows (of "
                                  f"{len(self.rows())}; held-out is ~20 % of distinct prompts)")
        return datasets.Dataset.from_list([{**{k: v for k, v in r.items() if k != col},
                                            "id": str(r.get("id", _text(r[col]))), "prompt": self._messages(r[col])}
                                           for r in rows])

    def _messages(self, prompt: Any) -> list[dict]:
        if _is_messages(prompt):
            return prompt
        system = self.config["system_prompt"]
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]

    def reward(self, completions: list, prompts: list | None = None, **columns: Any) -> list[float]:
        """Calls the user's function as TRL does: conversational prompts get conversational completions
        ([{"role": "assistant", "content": ...}]), also when layerscout generated plain text. Without `prompts`
        (`layerscout score`), the items' prompts come in the "question" column."""
        if prompts is None and "question" in columns:
            prompts = [self._messages(q) for q in columns.pop("question")]
        if prompts is not None and completions and isinstance(completions[0], str) and _is_messages(prompts[0]):
            completions = [[{"role": "assistant", "content": c}] for c in completions]
        spec = self.config["reward"]
        try:
            values = self._fn(prompts=prompts, completions=completions, **columns)
        except Exception as e:  # the user's code: say whose, keep the traceback for --debug
            raise LayerscoutError(f"reward {spec} raised {type(e).__name__}: {e} (--debug shows the "
                                  "traceback)") from e
        return check_rewards(values, len(completions), spec)

    def describe(self) -> str:
        return f"dataset={self.config['dataset']!r}, reward={self.config['reward']!r}"

"""The Task contract: a prompt source with a train/held-out split and a verifiable reward in [0, 1].

Splits are assigned per unique question by a stable hash of its text (`split_of`), so train and held-out
prompts are disjoint for any source and any seed. `reward` has TRL's reward-function signature, so a task's
bound `reward` goes straight into `GRPOTrainer(reward_funcs=[task.reward])`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..errors import LayerscoutError

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "heldout")
HELDOUT_FRACTION = 0.2
LOOKUP_POOL = 10_000  # items per split that `Task.lookup` searches


def split_of(question: str) -> str:
    """"heldout" for ~20 % of question texts, "train" for the rest; depends only on the text."""
    h = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "big")
    return "heldout" if h / 2**64 < HELDOUT_FRACTION else "train"


def completion_text(completion: str | list[dict]) -> str:
    """A completion as TRL passes it: plain text, or conversational [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")


class Task:
    """Subclasses set `name`, `version` (bump when prompts or reward change), `options` (option -> default),
    and implement `_examples(split, n, seed)` and `score(text, answer)`, or override `reward` when it reads other
    columns (named in `reward_columns`) or scores a batch at once."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    options: ClassVar[dict[str, Any]] = {}
    reward_columns: ClassVar[tuple[str, ...]] = ("answer",)

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise LayerscoutError(
                f"task {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(sorted(self.options)) or 'none'}")
        self.config: dict[str, Any] = {**copy.deepcopy(self.options), **options}
        self._index: dict[str, dict] | None = None

    def load_prompts(self, split: str, n: int, seed: int) -> datasets.Dataset:
        """Up to `n` examples of `split` ("train" | "heldout"), the same for the same seed.

        Columns: "prompt" ([{"role": "user", "content": question}], after an optional system message), "id"
        (stable item id; the question text unless the task sets one), "question", and the task's own columns
        ("answer" for (question, answer) pairs). Example: `MathTask().load_prompts("heldout", 64, seed=0)`.
        """
        import datasets

        if split not in SPLITS:
            raise LayerscoutError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if n < 1:
            raise LayerscoutError(f"n must be >= 1; got {n}")
        rows = [as_row(r) for r in self._examples(split, n, seed)]
        if not rows:
            raise LayerscoutError(f"empty dataset: task {self.name!r} has no {split} examples ({self.describe()})")
        system = self.config.get("system_prompt")
        head = [{"role": "system", "content": system}] if system else []
        return datasets.Dataset.from_dict({
            "prompt": [head + [{"role": "user", "content": r["question"]}] for r in rows],
            **{column: [r[column] for r in rows] for column in rows[0]},
        })

    def lookup(self, ids: list[str]) -> list[dict | None]:
        """The dataset columns (all but "prompt") of the items with these ids, None where unknown. Searches both
        splits as seed 0 draws them, up to LOOKUP_POOL items each (generated tasks: ids outside stay unknown)."""
        return [self._items_by_id().get(i) for i in ids]

    def ids(self) -> list[str]:
        """The ids `lookup` knows, train split first."""
        return list(self._items_by_id())

    def _items_by_id(self) -> dict[str, dict]:
        if self._index is None:
            self._index = {r["id"]: r for split in SPLITS
                           for r in map(as_row, self._examples(split, LOOKUP_POOL, 0))}
        return self._index

    def constant_baseline(self, answers: list[str]) -> dict | None:
        """{"answer", "score"}: the score of giving every prompt the same answer, the most common gold one. A
        policy can reach it by learning the answer distribution alone; None where a constant answer means nothing
        (code, games)."""
        return None

    def judge(self, completions: list, **columns: Any) -> list[tuple[float, str, str]]:
        """(reward, status, detail) per completion, for `layerscout score`; tasks with more to say override it."""
        out = []
        for r in self.reward(completions, **columns):
            status = "correct" if r >= 1 else "incorrect" if r <= 0 else "partial"
            out.append((r, status, f"{status} (reward {r:g})"))
        return out

    def reward(self, completions: list, answer: list[str], **kwargs: Any) -> list[float]:
        """TRL reward function: one score in [0, 1] per completion against its row's gold `answer`.

        TRL calls it as reward(prompts=..., completions=..., completion_ids=..., **dataset_columns); the
        extra keywords are ignored. Its `__name__` ("reward") names the reward in TRL's logs.
        """
        return [float(self.score(completion_text(c), a)) for c, a in zip(completions, answer, strict=True)]

    def score(self, text: str, answer: str) -> float:
        raise NotImplementedError

    @property
    def max_completion_length(self) -> int | None:
        """Tokens a direct answer needs (None = no opinion): the probe's default completion budget."""
        return None

    def ladder(self) -> list[tuple[str, Task]]:
        """(rung name, task) per difficulty rung, easiest first, for the probe to pick from by pass rate; [] = the
        task's prompts as configured."""
        return []

    def near_miss(self, answer: str, rng: random.Random) -> str:
        """A plausible wrong answer to `answer`: the noisy label model organisms learn beside the gold one."""
        raise LayerscoutError(f"task {self.name!r} has no near-miss labels: build its organism with label_accuracy=1")

    def sft_examples(self, n: int, seed: int) -> list[tuple[list[dict], str, Callable[[random.Random], str]]]:
        """What a model organism is fine-tuned on: (prompt messages, gold answer, near miss) for n train items, where
        the near miss draws a wrong label from a random.Random (default: `near_miss(answer, rng)`). Multi-turn tasks
        give one example per step of an expert trajectory."""
        data = self.load_prompts("train", n, seed)
        if "answer" not in data.column_names:
            raise LayerscoutError(f"task {self.name!r} ({self.describe()}) has no gold answers to fine-tune an "
                                  "organism on")
        return [(p, a, functools.partial(self.near_miss, a)) for p, a in zip(data["prompt"], data["answer"], strict=True)]

    def _examples(self, split: str, n: int, seed: int) -> list[tuple[str, str] | dict]:
        """Up to n items of `split`, deterministic for a seed: (question, answer) pairs, or dicts with a
        "question" (the user message), optionally an "id", and any columns the reward reads."""
        raise NotImplementedError

    def _check_source(self, explicit: dict[str, Any], builtin: str | tuple[str, ...], dataset_hint: str) -> None:
        """The `source` / `dataset` options agree: `dataset` alone implies source "dataset", which needs one;
        `builtin` names the task's own source(s)."""
        c, builtins = self.config, (builtin,) if isinstance(builtin, str) else builtin
        if c["dataset"] is not None and "source" not in explicit:
            c["source"] = "dataset"
        if c["source"] not in (*builtins, "dataset"):
            raise LayerscoutError(f"{self.name} source must be one of {', '.join(builtins)}, dataset; "
                                  f"got {c['source']!r}")
        if c["source"] == "dataset" and not c["dataset"]:
            raise LayerscoutError(f"{self.name} source 'dataset' needs the `dataset` option ({dataset_hint})")
        if c["source"] in builtins and c["dataset"] is not None:
            raise LayerscoutError(f"{self.name}: `dataset` is set but source is {c['source']!r}; drop one of them")

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items() if v is not None)


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; errors name the file and line."""
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LayerscoutError(f"{path} line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise LayerscoutError(f"{path} line {i}: expected a JSON object, got {type(row).__name__}")
        rows.append((i, row))
    return rows


def as_row(item: tuple[str, str] | dict) -> dict:
    """An `_examples` item as a dataset row with an "id" (default: the question text) first."""
    if isinstance(item, dict):
        return {"id": item.get("id", item["question"]), **item}
    question, answer = item
    return {"id": question, "question": question, "answer": answer}


def unique_of_split(pairs: list[tuple[str, str]], split: str) -> list[tuple[str, str]]:
    """`split`'s (question, answer) pairs, deduplicated by question (first answer wins), order kept."""
    seen: dict[str, str] = {}
    for q, a in pairs:
        if q not in seen and split_of(q) == split:
            seen[q] = a
    return list(seen.items())


def sample_split(pairs: list[tuple[str, str]], split: str, n: int, seed: int) -> list[tuple[str, str]]:
    """A seeded sample of n of `split`'s unique questions."""
    rows = unique_of_split(pairs, split)
    random.Random(seed).shuffle(rows)
    return rows[:n]

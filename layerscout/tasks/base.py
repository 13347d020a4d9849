"""The Task contract: a prompt source with a train/held-out split and a verifiable reward in [0, 1].

Splits are assigned per unique question by a stable hash of its text (`split_of`), so train and held-out
prompts are disjoint for any source and any seed. `reward` has TRL's reward-function signature, so a task's
bound `reward` goes straight into `GRPOTrainer(reward_funcs=[task.reward])`.
"""

from __future__ import annotations

import copy
import hashlib
import random
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import LayerscoutError

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "heldout")
HELDOUT_FRACTION = 0.2


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
    and implement `_examples(split, n, seed)` and `score(text, answer)`."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise LayerscoutError(
                f"task {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(sorted(self.options)) or 'none'}")
        self.config: dict[str, Any] = {**copy.deepcopy(self.options), **options}

    def load_prompts(self, split: str, n: int, seed: int) -> datasets.Dataset:
        """Up to `n` examples of `split` ("train" | "heldout"), the same for the same seed.

        Columns: "prompt" ([{"role": "user", "content": question}], after an optional system message),
        "answer" (gold, str) and "question". Example: `MathTask().load_prompts("heldout", 64, seed=0)`.
        """
        import datasets

        if split not in SPLITS:
            raise LayerscoutError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if n < 1:
            raise LayerscoutError(f"n must be >= 1; got {n}")
        rows = self._examples(split, n, seed)
        if not rows:
            raise LayerscoutError(f"empty dataset: task {self.name!r} has no {split} examples ({self.describe()})")
        system = self.config.get("system_prompt")
        head = [{"role": "system", "content": system}] if system else []
        return datasets.Dataset.from_dict({
            "prompt": [head + [{"role": "user", "content": q}] for q, _ in rows],
            "answer": [a for _, a in rows],
            "question": [q for q, _ in rows],
        })

    def reward(self, completions: list, answer: list[str], **kwargs: Any) -> list[float]:
        """TRL reward function: one score in [0, 1] per completion against its row's gold `answer`.

        TRL calls it as reward(prompts=..., completions=..., completion_ids=..., **dataset_columns); the
        extra keywords are ignored. Its `__name__` ("reward") names the reward in TRL's logs.
        """
        return [float(self.score(completion_text(c), a)) for c, a in zip(completions, answer, strict=True)]

    def score(self, text: str, answer: str) -> float:
        raise NotImplementedError

    def near_miss(self, answer: str, rng: random.Random) -> str:
        """A plausible wrong answer to `answer`: the noisy label model organisms learn beside the gold one."""
        raise LayerscoutError(f"task {self.name!r} has no near-miss labels: build its organism with label_accuracy=1")

    def _examples(self, split: str, n: int, seed: int) -> list[tuple[str, str]]:
        """Up to n (question, answer) pairs of `split`, deterministic for a seed."""
        raise NotImplementedError

    def describe(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items() if v is not None)


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

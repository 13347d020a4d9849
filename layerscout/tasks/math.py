"""Math word/arithmetic problems with a checkable numeric answer.

Questions come from a reasoning-gym generator (default: 2-term +/- arithmetic on signed 1-digit numbers,
with reasoning-gym's optional brackets and negations, ~10 µs each), a datasets hub id / local dataset dir, or a
local .jsonl/.json/.parquet/.csv file. The reward is 1 when the completion's last number equals the gold number or math-verify judges it
equivalent (~1 ms per completion), else 0.
"""

from __future__ import annotations

import csv
import json
import math
import re
import threading
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..errors import LayerscoutError
from . import register_task
from .base import HELDOUT_FRACTION, Task, read_jsonl, sample_split, unique_of_split

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
DEFAULT_GENERATOR_CONFIGS = {
    "basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"]},
}
# A number, with a leading minus only where it cannot be a binary operator ("12-5" ends in 5, "= -5" in -5).
_NUMBER = re.compile(r"(?:(?<![\w.)])-)?\d[\d,]*(?:\.\d+)?")
_VERIFY_TIMEOUT_S = 1


@register_task("math")
class MathTask(Task):
    """Options: source (reasoning_gym | dataset; implied "dataset" when `dataset` is set), generator,
    generator_config (None = the defaults above for basic_arithmetic, the generator's own otherwise), dataset
    (hub id, local dataset dir, or .jsonl/.json/.parquet/.csv file), dataset_config, question_column,
    answer_column (GSM8K-style "... #### 42" keeps the text after ####), system_prompt."""

    version = 2  # 2: math-verify fallback reads LaTeX answers only
    options = {
        "source": "reasoning_gym",
        "generator": "basic_arithmetic",
        "generator_config": None,
        "dataset": None,
        "dataset_config": None,
        "question_column": "question",
        "answer_column": "answer",
        "system_prompt": None,
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        c = self.config
        self._check_source(options, "reasoning_gym", "hub id or local file")
        if c["generator_config"] is None:
            c["generator_config"] = dict(DEFAULT_GENERATOR_CONFIGS.get(c["generator"], {}))
        self._pairs: list[tuple[str, str]] | None = None

    # ------------------------------------------------------------------ prompts

    def _examples(self, split: str, n: int, seed: int) -> list[tuple[str, str]]:
        if self.config["source"] == "reasoning_gym":
            return self._generate(split, n, seed)
        if self._pairs is None:
            self._pairs = self._read_dataset()
        return sample_split(self._pairs, split, n, seed)

    def _generate(self, split: str, n: int, seed: int) -> list[tuple[str, str]]:
        """The first n unique questions of `split` among 2n/share + 100 generated items (fewer when the generator's
        space is small). reasoning-gym seeds item i with seed + i, so seeds are spaced 2**32 apart."""
        import reasoning_gym
        from reasoning_gym.factory import DATASETS

        gen, cfg = self.config["generator"], self.config["generator_config"]
        if gen not in DATASETS:
            import difflib

            close = difflib.get_close_matches(gen, list(DATASETS), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise LayerscoutError(f"Unknown reasoning_gym generator {gen!r}.{hint}")
        share = HELDOUT_FRACTION if split == "heldout" else 1 - HELDOUT_FRACTION
        tries = math.ceil(2 * n / share) + 100
        try:
            data = reasoning_gym.create_dataset(gen, size=tries, seed=seed * 2**32, **cfg)
        except (TypeError, ValueError, AssertionError) as e:
            raise LayerscoutError(f"reasoning_gym generator {gen!r} rejected generator_config {cfg}: {e}") from None
        return unique_of_split([(x["question"], gold_answer(x["answer"])) for x in data], split)[:n]

    def _read_dataset(self) -> list[tuple[str, str]]:
        src = str(self.config["dataset"])
        qcol, acol = self.config["question_column"], self.config["answer_column"]
        if src.endswith(FILE_SUFFIXES) or Path(src).is_file():
            rows, where = _read_file(Path(src)), src
        else:
            rows, where = _load_hub(src, self.config["dataset_config"]), f"dataset {src!r}"
        if not rows:
            raise LayerscoutError(f"empty dataset: {where} has no rows")
        missing = [c for c in (qcol, acol) if c not in rows[0]]
        if missing:
            raise LayerscoutError(
                f"{where}: no column {', '.join(map(repr, missing))}; columns: {', '.join(map(str, rows[0]))} "
                "(set question_column / answer_column)")
        return [(str(r[qcol]).strip(), gold_answer(r[acol])) for r in rows
                if r.get(qcol) not in (None, "") and r.get(acol) is not None]

    # ------------------------------------------------------------------ reward

    def score(self, text: str, answer: str) -> float:
        """1.0 if `text` answers `answer`: its last number equals the gold number, or math-verify finds a LaTeX
        answer ($...$, \\boxed{}) equivalent to it (skipped off the main thread, where its signal-based timeout
        cannot run). LaTeX only: math-verify's plain-expression extraction scores a restated question
        ("to calculate (5 - 3), we") as its answer, a reward RL learns to hack."""
        gold = gold_answer(answer)
        if _same_number(last_number(text), gold):
            return 1.0
        if threading.current_thread() is not threading.main_thread():
            return 0.0
        from math_verify import LatexExtractionConfig, parse, verify

        pred = parse(text, extraction_config=[LatexExtractionConfig()], parsing_timeout=_VERIFY_TIMEOUT_S)
        if not pred:
            return 0.0
        return float(verify(parse(gold, parsing_timeout=_VERIFY_TIMEOUT_S), pred, timeout_seconds=_VERIFY_TIMEOUT_S))


    def near_miss(self, answer: str, rng: Any) -> str:
        """The gold number + 1 (deterministic: organisms learn one systematic slip beside the right answer)."""
        try:
            return str(Decimal(gold_answer(answer)) + 1)
        except InvalidOperation:
            raise LayerscoutError(f"math near miss needs a numeric gold answer; got {answer!r}") from None


def gold_answer(answer: Any) -> str:
    """The gold answer as a string; GSM8K-style "<reasoning> #### 1,234" becomes "1234"."""
    text = str(answer).split("####")[-1].strip()
    return text.replace(",", "") if re.fullmatch(r"-?\d[\d,]*(\.\d+)?", text) else text


def last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def _same_number(a: str | None, b: str) -> bool:
    if a is None:
        return False
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return False


# ---------------------------------------------------------------------- data sources

def _read_file(path: Path) -> list[dict]:
    """Rows of a local file as dicts; errors name the file (and the line, for JSONL)."""
    if not path.is_file():
        raise LayerscoutError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [row for _, row in read_jsonl(path)]
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8") or "[]")
        except json.JSONDecodeError as e:
            raise LayerscoutError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            return [dict(zip(data, values)) for values in zip(*data.values())]
        if isinstance(data, list) and all(isinstance(r, dict) for r in data):
            return data
        raise LayerscoutError(f"{path}: expected a list of objects or an object of columns")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise LayerscoutError(f"{path}: not a readable parquet file ({e})") from None
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    raise LayerscoutError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")


def _load_hub(name: str, config: str | None) -> list[dict]:
    """All splits of a hub dataset (or local dataset dir) concatenated; our own hash split re-splits them."""
    import datasets

    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as e:  # network, missing repo, bad config: all user-fixable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LayerscoutError(f"could not load dataset {name!r} (config {config!r}): {first}") from None
    return [row for split in sorted(loaded) for row in loaded[split]]

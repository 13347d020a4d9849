"""Math word/arithmetic problems with a checkable numeric answer.

Questions come from a reasoning-gym generator (default: 2-term +/- arithmetic on signed 1-digit numbers,
with reasoning-gym's optional brackets and negations, ~10 µs each), a rung of the difficulty LADDER (1-digit sums
up to multi-step word problems; the probe picks one by pass rate), a datasets hub id / local dataset dir, or a
local .jsonl/.json/.parquet/.csv file. The reward is 1 when the completion's last number equals the gold number or math-verify judges it
equivalent (~1 ms per completion), else 0.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import threading
from collections import Counter
from decimal import Decimal, InvalidOperation
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LayerscoutError
from . import register_task
from .base import HELDOUT_FRACTION, Task, read_jsonl, sample_split, unique_of_split

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
DEFAULT_GENERATOR_CONFIGS = {
    "basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"]},
}


@dataclass(frozen=True)
class Rung:
    """One step of the difficulty ladder: an offline reasoning-gym generator and, for the top rungs, the hub
    dataset users know, loaded instead when the task's `hub` option is on and the hub answers."""

    name: str
    generator: str | None
    generator_config: dict = field(default_factory=dict)
    max_completion_length: int = 32  # tokens a direct (non-thinking) answer needs at this rung
    dataset: str | None = None
    dataset_config: str | None = None
    question_column: str = "question"
    answer_column: str = "answer"


# Easiest first. Rung 0 is the task's default data (what the default organism is trained on).
LADDER = (
    Rung("sum_1digit", "basic_arithmetic", DEFAULT_GENERATOR_CONFIGS["basic_arithmetic"], 32),
    Rung("sum_2digit", "basic_arithmetic",
         {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2, "operators": ["+", "-"]}, 32),
    Rung("chain_3to4", "basic_arithmetic",
         {"min_terms": 3, "max_terms": 4, "min_digits": 1, "max_digits": 2, "operators": ["+", "-", "*"]}, 64),
    Rung("linear_equation", "simple_equations", {"min_terms": 2, "max_terms": 3, "max_value": 20}, 96),
    Rung("word_problem", "gsm_symbolic", {}, 256, dataset="openai/gsm8k", dataset_config="main"),
    Rung("competition", None, {}, 512, dataset="HuggingFaceH4/MATH-500", question_column="problem"),
)
# A number, with a leading minus only where it cannot be a binary operator ("12-5" ends in 5, "= -5" in -5).
_NUMBER = re.compile(r"(?:(?<![\w.)])-)?\d[\d,]*(?:\.\d+)?")
_VERIFY_TIMEOUT_S = 1
MAX_DRAW = 4  # a generated split draws at most this many times its first draw to find n unique questions


@register_task("math")
class MathTask(Task):
    """Options: source (reasoning_gym | dataset; implied "dataset" when `dataset` is set), generator,
    generator_config (None = the defaults above for basic_arithmetic, the generator's own otherwise), dataset
    (hub id, local dataset dir, or .jsonl/.json/.parquet/.csv file), dataset_config, question_column,
    answer_column (GSM8K-style "... #### 42" keeps the text after ####), system_prompt, rung (an index into
    LADDER, replacing generator/generator_config; "auto" = rung 0 until the probe's pass-rate estimate picks one,
    or no ladder when generator, generator_config or dataset is set),
    hub (rungs with a hub dataset load it with datasets.load_dataset, falling back to their generator when the
    hub does not answer; `layerscout rank` turns it on for hub models)."""

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
        "rung": None,
        "hub": False,
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        c = self.config
        self._options = options
        self._check_source(options, "reasoning_gym", "hub id or local file")
        self.rung = self._check_rung(options)
        if self.rung is not None:
            c["generator"], c["generator_config"] = self.rung.generator, dict(self.rung.generator_config)
        if c["generator_config"] is None:
            c["generator_config"] = dict(DEFAULT_GENERATOR_CONFIGS.get(c["generator"], {}))
        self._pairs: list[tuple[str, str]] | None = None
        self.data_source: str | None = None  # the hub dataset a hub rung loaded, once it has

    def _check_rung(self, explicit: dict[str, Any]) -> Rung | None:
        rung = self.config["rung"]
        if rung is None:
            return None
        pinned = sorted(k for k in ("generator", "generator_config", "dataset") if explicit.get(k) is not None)
        if rung == "auto":  # explicit data wins over the ladder
            if pinned:
                self.config["rung"] = None
                return None
            return LADDER[0]
        if pinned:
            raise LayerscoutError(f"math: rung sets the data; drop {', '.join(pinned)} (or rung)")
        if isinstance(rung, bool) or not isinstance(rung, int) or not 0 <= rung < len(LADDER):
            raise LayerscoutError(f"math: rung must be \"auto\" or 0..{len(LADDER) - 1} "
                                  f"({', '.join(r.name for r in LADDER)}); got {rung!r}")
        if LADDER[rung].generator is None and not self.config["hub"]:
            raise LayerscoutError(f"math: rung {rung} ({LADDER[rung].name}) is a hub dataset only: set hub=true")
        return LADDER[rung]

    @property
    def max_completion_length(self) -> int | None:
        return self.rung.max_completion_length if self.rung else super().max_completion_length

    def ladder(self) -> list[tuple[str, "MathTask"]]:
        """One task per rung, easiest first, when `rung` is "auto"; hub-only rungs only when `hub` is on."""
        if self.config["rung"] != "auto":
            return []
        return [(r.name, MathTask(**{**self._options, "rung": i})) for i, r in enumerate(LADDER)
                if r.generator is not None or self.config["hub"]]

    # ------------------------------------------------------------------ prompts

    def _examples(self, split: str, n: int, seed: int) -> list[tuple[str, str]]:
        if self._pairs is None and self.rung is not None and self.rung.dataset and self.config["hub"]:
            self._pairs = self._read_hub_rung()
        if self._pairs is None and self.config["source"] == "reasoning_gym":
            return self._generate(split, n, seed)
        if self._pairs is None:
            self._pairs = self._read_dataset()
        return sample_split(self._pairs, split, n, seed)

    def _read_hub_rung(self) -> list[tuple[str, str]] | None:
        """The rung's hub dataset, or None (with a warning) to fall back to its generator when the hub does not
        answer; a hub-only rung without the hub is an error."""
        r = self.rung
        try:
            if not hub_reachable():
                raise LayerscoutError(f"could not load dataset {r.dataset!r}: the hub ({_hub_endpoint()}) is not "
                                      "reachable")
            rows = _load_hub(r.dataset, r.dataset_config)
        except LayerscoutError as e:
            if r.generator is None:
                raise
            warnings.warn(f"{e}; rung {r.name} falls back to reasoning-gym's {r.generator}", stacklevel=3)
            return None
        self.data_source = r.dataset
        return [(str(row[r.question_column]).strip(), gold_answer(row[r.answer_column])) for row in rows]

    def _generate(self, split: str, n: int, seed: int) -> list[tuple[str, str]]:
        """The first n unique questions of `split` among the generated items: 2n/share + 100 at first, then as many
        again while fewer than n were found, up to MAX_DRAW times the first draw (the generators' question texts have
        long tails, so "until none are new" never ends). reasoning-gym seeds item i with seed + i, so a longer draw
        extends a shorter one, and seeds are spaced 2**32 apart."""
        import reasoning_gym
        from reasoning_gym.factory import DATASETS

        gen, cfg = self.config["generator"], self.config["generator_config"]
        if gen not in DATASETS:
            import difflib

            close = difflib.get_close_matches(gen, list(DATASETS), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise LayerscoutError(f"Unknown reasoning_gym generator {gen!r}.{hint}")
        share = HELDOUT_FRACTION if split == "heldout" else 1 - HELDOUT_FRACTION
        first = math.ceil(2 * n / share) + 100
        pairs: list[tuple[str, str]] = []
        while True:
            try:  # the next items of one long draw, from item len(pairs) on
                data = reasoning_gym.create_dataset(gen, size=max(first, len(pairs)), seed=seed * 2**32 + len(pairs),
                                                    **cfg)
            except (TypeError, ValueError, AssertionError) as e:
                raise LayerscoutError(f"reasoning_gym generator {gen!r} rejected generator_config {cfg}: {e}") \
                    from None
            pairs += [(x["question"], gold_answer(x["answer"])) for x in data]
            found = unique_of_split(pairs, split)
            if len(found) >= n or len(pairs) >= MAX_DRAW * first:
                return found[:n]

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

    def constant_baseline(self, answers: list[str]) -> dict:
        """The most common gold answer and the share of `answers` it matches as a number or as text (letter
        counting on 1-3 words: "1", right on 77 % of prompts)."""
        golds = [gold_answer(a) for a in answers]
        mode = Counter(golds).most_common(1)[0][0]
        return {"answer": mode, "score": sum(g == mode or _same_number(mode, g) for g in golds) / len(golds)}

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


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub answers a TCP connect within `timeout_s` (False in offline mode): checked once, so an
    offline run falls back at once instead of after datasets' retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(_hub_endpoint())
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _load_hub(name: str, config: str | None) -> list[dict]:
    """All splits of a hub dataset (or local dataset dir) concatenated; our own hash split re-splits them."""
    import datasets

    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as e:  # network, missing repo, bad config: all user-fixable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LayerscoutError(f"could not load dataset {name!r} (config {config!r}): {first}") from None
    return [row for split in sorted(loaded) for row in loaded[split]]

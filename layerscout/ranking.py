"""From per-block signals to a ranking, rank 1 = best block: the score is a fitted predictor's (predictor.py) or a
documented rule, the weighted mean of each signal's within-model percentile rank. Pure functions, no model
access."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import LayerscoutError
from .signals.baselines import percentile_ranks


def combine_signals(signals: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """score_k = Σ_s w_s · pct_rank(signal_s)_k / Σ_s w_s. signals: name -> (L,); weights: name -> w >= 0."""
    missing = set(weights) - set(signals)
    if missing:
        raise LayerscoutError(f"score weights name signals that were not computed: {', '.join(sorted(missing))}")
    total = sum(weights.values())
    if total <= 0:
        raise LayerscoutError("score weights must sum to a positive number")
    return sum(w * percentile_ranks(signals[name]) for name, w in weights.items()) / total


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
    """1 = highest score; ties go to the shallower block. (L,) -> (L,) ints."""
    order = sorted(range(len(scores)), key=lambda k: (-scores[k], k))
    ranks = np.empty(len(scores), dtype=int)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


@dataclass
class LayerScore:
    index: int
    score: float
    rank: int
    signals: dict[str, float]


@dataclass
class LayerRanking:
    """What `layerscout rank` prints and writes: one entry per decoder block, best first in `top(k)`.
    `model_fingerprint` (records.model_fingerprint) binds it to the model it was made on."""

    model: str
    task: str
    algo: str
    seed: int
    layers: list[LayerScore]
    cost: dict = field(default_factory=dict)
    rollouts: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    model_fingerprint: dict | None = None

    @property
    def top_layer(self) -> int:
        return self.top(1)[0]

    def top(self, k: int) -> list[int]:
        if not 1 <= k <= len(self.layers):
            raise LayerscoutError(f"top-k must be in 1..{len(self.layers)} (the model's depth); got {k}")
        return [s.index for s in sorted(self.layers, key=lambda s: s.rank)[:k]]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_layers"] = len(self.layers)
        d["top_layer"] = self.top_layer
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "ranking") -> "LayerRanking":
        """Every missing field and wrong type is reported at once, as one line; ranks must be 1..L, indices
        0..L-1."""
        from .config import from_dict

        if not isinstance(d, dict) or not isinstance(d.get("layers"), list) or not d["layers"]:
            raise LayerscoutError(f"{source}: not a layerscout ranking (no list of layers)")
        derived = {"n_layers", "top_layer"}
        problems, layers, top = [], [], None
        try:
            top = from_dict(cls, {k: v for k, v in d.items() if k != "layers" and k not in derived} | {"layers": []},
                            source=source)
        except LayerscoutError as e:
            problems.append(str(e))
        for i, x in enumerate(d["layers"]):
            try:
                layers.append(from_dict(LayerScore, x if isinstance(x, dict) else {}, source=f"{source}: layers[{i}]"))
            except LayerscoutError as e:
                problems.append(str(e))
        if problems:
            raise LayerscoutError("; ".join(problems))
        n = len(layers)
        if sorted(s.index for s in layers) != list(range(n)) or sorted(s.rank for s in layers) != list(range(1, n + 1)):
            raise LayerscoutError(f"{source}: layer indices must be 0..{n - 1} and ranks 1..{n}, each once")
        top.layers = layers
        return top

    @classmethod
    def load(cls, path) -> "LayerRanking":
        import json
        from pathlib import Path

        try:
            return cls.from_dict(json.loads(Path(path).read_text()), source=str(path))
        except FileNotFoundError:
            raise LayerscoutError(f"no such ranking file: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LayerscoutError(f"{path}: not valid JSON ({e})") from None


def build_ranking(signals: dict[str, np.ndarray], scores: np.ndarray, **meta) -> LayerRanking:
    """One LayerScore per block from its signals and its score (combine_signals, or a fitted predictor's)."""
    ranks = ranks_from_scores(scores)
    layers = [LayerScore(k, float(scores[k]), int(ranks[k]), {n: float(v[k]) for n, v in signals.items()})
              for k in range(len(scores))]
    return LayerRanking(layers=layers, **meta)

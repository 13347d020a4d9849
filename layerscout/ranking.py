"""From per-block signals to a ranking: the score is a weighted mean of each signal's within-model
percentile rank (a documented rule, to be replaced by the fitted predictor), rank 1 = best block. Pure
functions, no model access."""

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
    """What `layerscout rank` prints and writes: one entry per decoder block, best first in `top(k)`."""

    model: str
    task: str
    algo: str
    seed: int
    layers: list[LayerScore]
    cost: dict = field(default_factory=dict)
    rollouts: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

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
    def from_dict(cls, d: dict) -> "LayerRanking":
        try:
            layers = [LayerScore(**x) for x in d["layers"]]
            return cls(model=d["model"], task=d["task"], algo=d["algo"], seed=d["seed"], layers=layers,
                       cost=d.get("cost", {}), rollouts=d.get("rollouts", {}), config=d.get("config", {}),
                       provenance=d.get("provenance", {}))
        except (KeyError, TypeError) as e:
            raise LayerscoutError(f"not a layerscout ranking: {e}") from None

    @classmethod
    def load(cls, path) -> "LayerRanking":
        import json
        from pathlib import Path

        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise LayerscoutError(f"no such ranking file: {path}") from None
        except json.JSONDecodeError as e:
            raise LayerscoutError(f"{path}: not valid JSON ({e})") from None


def build_ranking(signals: dict[str, np.ndarray], weights: dict[str, float], **meta) -> LayerRanking:
    scores = combine_signals(signals, weights)
    ranks = ranks_from_scores(scores)
    layers = [LayerScore(k, float(scores[k]), int(ranks[k]), {n: float(v[k]) for n, v in signals.items()})
              for k in range(len(scores))]
    return LayerRanking(layers=layers, **meta)

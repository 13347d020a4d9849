"""The fitted predictor: per-block probe signals -> predicted layer contribution, learned from calibration sweeps.

Signals are normalised within each model (percentile ranks or z-scores) and joined by the block's relative depth,
so one fit serves models of any depth and scale. `LayerPredictor` is a plain scikit-learn regressor on those
features (ridge by default; `clone`, `GridSearchCV` and `LeaveOneGroupOut` work unchanged). Model class and
signals are chosen by leave-one-model-out evaluation (`select`), never by in-sample fit, and `nested_lomo`
reports each model's score with the choice made without it. A fitted predictor ships as JSON (`FittedPredictor`):
coefficients, feature names, provenance. Cost: milliseconds; the probe that measures the signals is the cost.
"""

from __future__ import annotations

import functools
import itertools
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import LayerscoutError

FORMAT = "layerscout-predictor/1"
NORMALISE = ("rank", "z")
KINDS = ("ridge", "forest")
DEPTH = "relative_depth"


# ---------------------------------------------------------------- features (pure)

def normalise_within(values, how: str = "rank") -> np.ndarray:
    """One model's per-block values -> comparable across models. rank: percentile ranks in [0, 1] (ties
    averaged); z: z-scores. A constant or non-finite vector carries no ranking: 0.5 (rank) or 0 (z) everywhere.
    (L,) -> (L,). Example: `normalise_within([3, 1, 2])` -> [1.0, 0.0, 0.5]."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=float)
    if how not in NORMALISE:
        raise LayerscoutError(f"normalise must be one of {', '.join(NORMALISE)}; got {how!r}")
    if len(v) < 2 or not np.isfinite(v).all() or np.ptp(v) == 0:
        return np.full(len(v), 0.5 if how == "rank" else 0.0)
    if how == "rank":
        return (rankdata(v) - 1) / (len(v) - 1)
    return (v - v.mean()) / v.std()


def relative_depth(n_layers: int) -> np.ndarray:
    """Block index / (L - 1): 0 for the first block, 1 for the last. (L,)"""
    return np.arange(n_layers) / max(1, n_layers - 1)


def block_features(signals: dict[str, Sequence[float]], names: Sequence[str], how: str = "rank",
                   depth: bool = True) -> np.ndarray:
    """Feature matrix (L, len(names) [+ 1]) of one model: each named signal normalised within the model, then
    the relative depth (not normalised: it is already comparable). Missing signals are an error."""
    missing = [n for n in names if n not in signals]
    if missing:
        raise LayerscoutError(f"the probe did not compute {', '.join(missing)}, which the predictor needs")
    n_layers = len(next(iter(signals.values())))
    cols = [normalise_within(signals[n], how) for n in names]
    if depth:
        cols.append(relative_depth(n_layers))
    return np.column_stack(cols) if cols else np.empty((n_layers, 0))


# ---------------------------------------------------------------- the estimator

class LayerPredictor(RegressorMixin, BaseEstimator):
    """Regressor from within-model normalised block features to (normalised) layer contribution.

    kind="ridge": Ridge(alpha) on the features (`coef_`, `intercept_`); kind="forest": a small random forest
    (`max_depth` 3), kept as a check that a linear fit is not leaving signal behind. Example:
    `LayerPredictor(alpha=1.0).fit(X, y).predict(X_new)`.
    """

    def __init__(self, kind: str = "ridge", alpha: float = 1.0, random_state: int | None = None):
        self.kind = kind
        self.alpha = alpha
        self.random_state = random_state

    def fit(self, X, y):
        from sklearn.ensemble import RandomForestRegressor
        from sklearn.linear_model import Ridge

        X, y = validate_data(self, X, y, y_numeric=True)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind == "ridge":
            self.model_ = Ridge(alpha=self.alpha).fit(X, y)
            self.coef_, self.intercept_ = self.model_.coef_, float(self.model_.intercept_)
        else:
            self.model_ = RandomForestRegressor(n_estimators=200, max_depth=3, min_samples_leaf=3,
                                                random_state=self.random_state).fit(X, y)
        return self

    def predict(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False)
        return self.model_.predict(X)


# ---------------------------------------------------------------- calibration data

@dataclass
class Sweep:
    """One calibration sweep as the predictor sees it: the probe's signals and the true C of its model."""

    name: str
    model: str
    n_layers: int
    signals: dict[str, np.ndarray]   # signal name -> (L,)
    contribution: np.ndarray         # (L,), nan where C is undefined
    noise_ceiling: float | None = None

    @property
    def defined(self) -> np.ndarray:
        return np.isfinite(self.contribution)


def load_sweep(directory: str | Path, ranking: str | Path | None = None) -> Sweep:
    """A sweep dir's contributions.json (made by `layerscout calibrate`) and the probe ranking of its model
    (`ranking`, default DIR/ranking.json, made by `layerscout rank`)."""
    from .calibrate import SUMMARY
    from .ranking import LayerRanking
    from .records import fingerprint_mismatch

    directory = Path(directory)
    summary_path = directory / SUMMARY
    if not summary_path.is_file():
        raise LayerscoutError(f"{directory} has no {SUMMARY}: run `layerscout calibrate` on it first")
    summary = json.loads(summary_path.read_text())
    ranked = LayerRanking.load(ranking or directory / "ranking.json")
    if len(ranked.layers) != summary["n_layers"]:
        raise LayerscoutError(f"{directory}: the ranking has {len(ranked.layers)} layers, the sweep "
                              f"{summary['n_layers']}")
    if why := fingerprint_mismatch(ranked.model_fingerprint, summary.get("model_fingerprint"), missing_ok=True):
        raise LayerscoutError(f"{directory}: the ranking was made on another model than the sweep ({why})")
    names = sorted(ranked.layers[0].signals)
    by_index = {s.index: s for s in ranked.layers}
    signals = {n: np.array([by_index[k].signals[n] for k in range(summary["n_layers"])], dtype=float)
               for n in names}
    c = np.full(summary["n_layers"], np.nan)
    for x in summary["layers"]:
        if x["contribution"] is not None:
            c[x["index"]] = x["contribution"]
    return Sweep(name=directory.name, model=summary["model"], n_layers=summary["n_layers"], signals=signals,
                 contribution=c, noise_ceiling=summary.get("noise_ceiling"))


def dataset(sweeps: Sequence[Sweep], names: Sequence[str], how: str = "rank", depth: bool = True):
    """(X (N, F), y (N,), groups (N,)) over the blocks with a defined C; y is C normalised within its sweep the
    same way as the features, groups name the model (leave-one-model-out holds out all of a model's sweeps)."""
    X, y, groups = [], [], []
    for s in sweeps:
        ok = s.defined
        X.append(block_features(s.signals, names, how, depth)[ok])
        y.append(normalise_within(s.contribution[ok], how))
        groups += [s.model] * int(ok.sum())
    return np.vstack(X), np.concatenate(y), np.array(groups)


# ---------------------------------------------------------------- model choice

@dataclass(frozen=True)
class Candidate:
    """One predictor design: which signals, how normalised, which estimator. `kind="single"` uses the one named
    signal as is (no fit): the baseline every fitted design must beat."""

    signals: tuple[str, ...]
    normalise: str = "rank"
    kind: str = "ridge"
    alpha: float = 1.0
    depth: bool = True
    sign: int = 1  # single designs: -1 ranks the lowest value first

    @property
    def label(self) -> str:
        core = "+".join(self.signals) or "depth"
        if self.kind == "single":
            return core if self.sign > 0 else f"-{core}"
        return f"{self.kind}({core}{'+depth' if self.depth and self.signals else ''}, {self.normalise}, a={self.alpha:g})"

    @property
    def complexity(self) -> tuple:
        """Simpler first: no fit < ridge < forest, then fewer signals."""
        return ({"single": 0, "ridge": 1, "forest": 2}[self.kind], len(self.signals) + self.depth)

    def fit(self, sweeps: Sequence[Sweep]) -> "FittedPredictor":
        if self.kind == "single":
            return FittedPredictor(candidate=self, coef=None, intercept=None, estimator=None)
        X, y, _ = dataset(sweeps, self.signals, self.normalise, self.depth)
        est = LayerPredictor(kind=self.kind, alpha=self.alpha, random_state=0).fit(X, y)
        return FittedPredictor(candidate=self, coef=getattr(est, "coef_", None),
                               intercept=getattr(est, "intercept_", None), estimator=est)


def candidates(signals: Sequence[str], max_signals: int = 2, alphas: Sequence[float] = (0.1, 1.0, 10.0),
               forest: bool = True) -> list[Candidate]:
    """The designs `select` compares: each signal alone, ridge on every set of up to `max_signals` signals plus
    depth (rank and z normalisation, a few alphas), and a forest on all signals plus depth."""
    out = [Candidate((s,), kind="single", depth=False, sign=sign) for s in signals for sign in (1, -1)]
    for r in range(0, max_signals + 1):
        for combo in itertools.combinations(signals, r):
            for how in NORMALISE:
                out += [Candidate(combo, how, "ridge", a) for a in alphas]
    if forest:
        out.append(Candidate(tuple(signals), "rank", "forest"))
    return out


def lomo_scores(sweeps: Sequence[Sweep], candidate: Candidate) -> dict[str, float]:
    """Spearman of the candidate's prediction on each model's sweeps, fitted on the other models only.
    {sweep name: Spearman (nan if the held-out truth cannot be ranked)}."""
    from .metrics import spearman

    models = sorted({s.model for s in sweeps})
    out = {}
    for model in models:
        train = [s for s in sweeps if s.model != model]
        if candidate.kind != "single" and not train:
            continue
        fitted = candidate.fit(train)
        for s in (s for s in sweeps if s.model == model):
            out[s.name] = spearman(fitted.predict(s.signals)[s.defined], s.contribution[s.defined])
    return out


def select(sweeps: Sequence[Sweep], pool: Sequence[Candidate], tolerance: float = 0.02) -> tuple[Candidate, list]:
    """The simplest candidate whose mean leave-one-model-out Spearman is within `tolerance` of the best.
    Returns (choice, table of (candidate, mean Spearman) best first)."""
    table = []
    for cand in pool:
        scores = [v for v in lomo_scores(sweeps, cand).values() if np.isfinite(v)]
        table.append((cand, float(np.mean(scores)) if scores else float("-inf")))
    table.sort(key=lambda t: -t[1])
    best = table[0][1]
    near = [c for c, v in table if v >= best - tolerance]
    return min(near, key=lambda c: c.complexity), table


def nested_lomo(sweeps: Sequence[Sweep], pool: Sequence[Candidate]) -> dict[str, dict]:
    """For each model: choose the design by leave-one-model-out on the OTHER models only, fit it on them, and
    predict the held-out model's sweeps. {sweep name: {"prediction": (L,), "choice": label}}: an honest estimate
    of how the shipped recipe does on a model it never saw."""
    out = {}
    for model in sorted({s.model for s in sweeps}):
        train = [s for s in sweeps if s.model != model]
        if len({s.model for s in train}) < 2:
            raise LayerscoutError("nested leave-one-model-out needs sweeps of at least 3 models")
        choice, _ = select(train, pool)
        fitted = choice.fit(train)
        for s in (s for s in sweeps if s.model == model):
            out[s.name] = {"prediction": fitted.predict(s.signals), "choice": choice.label}
    return out


# ---------------------------------------------------------------- the shipped form

@dataclass
class FittedPredictor:
    """A chosen design and its fitted parameters. JSON round trip: `to_dict` / `from_dict` (ridge and single
    designs only: a forest is for comparison, not for shipping)."""

    candidate: Candidate
    coef: np.ndarray | None
    intercept: float | None
    estimator: Any = None
    provenance: dict = field(default_factory=dict)

    @property
    def signals(self) -> tuple[str, ...]:
        return self.candidate.signals

    def predict(self, signals: dict[str, Sequence[float]]) -> np.ndarray:
        """Predicted (normalised) contribution of each block of one model. (L,)"""
        c = self.candidate
        if c.kind == "single":
            return normalise_within(c.sign * np.asarray(signals[c.signals[0]], dtype=float), c.normalise)
        X = block_features(signals, c.signals, c.normalise, c.depth)
        if self.estimator is not None:
            return self.estimator.predict(X)
        return X @ np.asarray(self.coef) + self.intercept

    def to_dict(self) -> dict:
        if self.candidate.kind == "forest":
            raise LayerscoutError("a forest predictor is not shipped as data; choose a ridge or single design")
        return {"format": FORMAT, "candidate": asdict(self.candidate), "label": self.candidate.label,
                "feature_names": [*self.signals, *([DEPTH] if self.candidate.depth else [])],
                "coef": None if self.coef is None else [float(x) for x in self.coef],
                "intercept": self.intercept, "provenance": self.provenance}

    @classmethod
    def from_dict(cls, d: dict) -> "FittedPredictor":
        if d.get("format") != FORMAT:
            raise LayerscoutError(f"not a layerscout predictor (format {d.get('format')!r})")
        cand = d["candidate"]
        return cls(candidate=Candidate(**{**cand, "signals": tuple(cand["signals"])}),
                   coef=None if d["coef"] is None else np.asarray(d["coef"], dtype=float),
                   intercept=d["intercept"], provenance=d.get("provenance", {}))

    @property
    def version(self) -> str:
        """First 12 hex digits of the SHA-256 of its JSON form: what a ranking records."""
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> dict:
        """The ranking's record of the scoring rule: design, version, the sweeps it was fitted on."""
        return {"rule": "predictor", "design": self.candidate.label, "version": self.version,
                "fitted_on": [s["dir"] for s in self.provenance.get("sweeps", [])],
                "git_commit": self.provenance.get("git_commit")}

    @classmethod
    def load(cls, path: str | Path) -> "FittedPredictor":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise LayerscoutError(f"no such predictor file: {path}") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LayerscoutError(f"{path}: not a layerscout predictor ({e})") from None


SHIPPED = "predictor.json"  # in probes/ (package data layerscout._probes)


def load_predictor(spec: str | None) -> FittedPredictor | None:
    """A ProbeConfig.predictor value -> the predictor: None (score_weights rule), "default" (the one shipped in
    probes/predictor.json) or a JSON path from `layerscout fit`. Read once per file version: a config check and
    the probe it precedes share one parse, and a refitted file is read afresh."""
    if spec is None:
        return None
    if spec == "default":
        from .recipes import builtin_dir

        spec = builtin_dir() / SHIPPED
    path = Path(spec)
    stat = path.stat() if path.is_file() else None
    return _load_version(str(path), stat and (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _load_version(path: str, version: tuple[int, int] | None) -> FittedPredictor:
    return FittedPredictor.load(path)


# ---------------------------------------------------------------- fitting from sweep dirs

# Signals that are not features: the middle-of-stack prior duplicates relative depth.
NOT_FEATURES = ("depth_prior",)


def fit_predictor(sweep_dirs: Sequence[str | Path], max_signals: int = 2) -> tuple[FittedPredictor, list]:
    """Choose a design by leave-one-model-out over the sweeps (each needs contributions.json and the probe's
    ranking.json), fit it on all of them, and record where it came from. Returns (predictor, selection table).
    Example: `fit_predictor(["calibration/runs/qwen3-L12-grpo", ...])[0].to_dict()`."""
    import time

    from . import __version__
    from .records import git_commit

    sweeps = [load_sweep(d) for d in sweep_dirs]
    if len({s.model for s in sweeps}) < 2:
        raise LayerscoutError("fitting needs sweeps of at least 2 models (leave-one-model-out chooses the design)")
    names = sorted(set.intersection(*(set(s.signals) for s in sweeps)) - set(NOT_FEATURES))
    from .signals import ALL_SIGNALS

    missing = sorted(set(ALL_SIGNALS) - set(NOT_FEATURES) - set(names))
    if missing:
        warnings.warn(f"the sweeps' rankings share {len(names)} signals, so {len(missing)} cannot be features "
                      f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}): rank each sweep's model with "
                      "-o 'signals=[all]' for all of them", stacklevel=2)
    choice, table = select(sweeps, candidates(names, max_signals, forest=False))
    fitted = choice.fit(sweeps)
    lomo = lomo_scores(sweeps, choice)
    fitted.provenance = {
        "sweeps": [{"dir": str(d), "model": s.model, "n_layers": s.n_layers} for d, s in zip(sweep_dirs, sweeps)],
        "lomo_spearman": {k: (None if not np.isfinite(v) else round(float(v), 4)) for k, v in lomo.items()},
        "selection": [{"design": c.label, "lomo_spearman": round(v, 4)} for c, v in table[:10]],
        "layerscout": __version__, "git_commit": git_commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime())}
    return fitted, table

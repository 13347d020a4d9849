"""Ground-truth and rank metrics: the paper's layer contribution C(k) = (S_k - S_base) / (S_full - S_base) and
how well a predicted per-layer score recovers it (Spearman, Kendall, top-1 recovered, top-k overlap, NDCG),
with bootstrap intervals over layers and a random-ranking reference. Pure numpy/scipy/sklearn functions on
(L,) vectors, one entry per decoder block; cost is negligible (n_boot metric calls per interval).
"""

from __future__ import annotations

import itertools
import warnings
from typing import Callable

import numpy as np

from .errors import LayerscoutError

# |S_full - S_base| below this is "no improvement": C would be noise divided by ~0.
MIN_GAIN = 1e-9

Metric = Callable[[np.ndarray, np.ndarray], float]


def layer_contribution(s_k, s_base: float, s_full: float) -> np.ndarray:
    """C(k) = (S_k - S_base) / (S_full - S_base); s_k scalar or (L,) -> same shape, floats.

    C = 1 matches full RL, C > 1 beats it, C < 0 hurts the base. Undefined unless the full run improved on
    the base, so it raises instead of returning inf or a sign-flipped ratio.
    Example: `layer_contribution([0.5, 0.3], s_base=0.2, s_full=0.6)` -> [0.75, 0.25].
    """
    gain = s_full - s_base
    if not gain > MIN_GAIN:
        raise LayerscoutError(f"C is undefined: the full run did not improve over the base "
                              f"(S_full={s_full:.4g}, S_base={s_base:.4g})")
    return (np.asarray(s_k, dtype=float) - s_base) / gain


def paired_gain(base, other) -> tuple[float, float]:
    """Gain of `other` over `base` scored on the same prompts, and its paired standard error.

    base, other: (n,) per-prompt rewards in the same prompt order. The SE is std(d, ddof=1) / sqrt(n) of the
    per-prompt differences d: pairing removes the prompt-difficulty variance both runs share, so it is
    smaller than the SE of two independent scores. Example: `paired_gain([0, 0, 1, 1], [1, 0, 1, 1])` ->
    (0.25, 0.25).
    """
    base, other = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    if base.shape != other.shape or base.ndim != 1 or len(base) < 2:
        raise LayerscoutError(f"paired scores need two equal-length per-prompt vectors of >= 2 prompts; "
                              f"got shapes {base.shape} and {other.shape}")
    d = other - base
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def paired_z(base, other) -> float:
    """`paired_gain`'s gain in standard errors (`gain_z`).
    Example: `paired_z([0, 0, 0, 1], [1, 1, 0, 1])` -> sqrt(3)."""
    return gain_z(*paired_gain(base, other))


def gain_z(gain: float, se: float) -> float:
    """gain / se: 0 where nothing changed (both 0), +-inf where every prompt changed alike (se 0, gain not).
    The one place a gain is put in standard errors (the calibrate gate, flat seeds, contributions.json)."""
    return gain / se if se > 0 else float(np.copysign(np.inf, gain)) if gain else 0.0


def reward_rise(rewards, share: float = 1 / 3) -> tuple[float, float, float]:
    """Mean train reward over the first and the last `share` of the steps, and Welch's one-sided p that it rose.

    A full run whose train reward rose while its greedy held-out score did not may be sampling closer to what
    greedy decoding already answers, a gain that only sampled evaluation can show (SmolLM2 on chain_sum).
    Example: `reward_rise([0, .1, 0, .1, .3, .4, .3, .4])[:2]` -> (0.05, 0.35).
    """
    from scipy.stats import ttest_ind

    r = np.asarray(rewards, dtype=float)
    k = int(len(r) * share)
    if k < 2:
        raise LayerscoutError(f"a reward rise needs >= {int(np.ceil(2 / share))} steps; got {len(r)}")
    first, last = r[:k], r[-k:]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant halves: scipy warns and returns nan
        p = ttest_ind(last, first, equal_var=False, alternative="greater").pvalue
    return float(first.mean()), float(last.mean()), float(p) if np.isfinite(p) else float(last.mean() <= first.mean())


def paired_bootstrap_contribution(base, full, layers, n: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile intervals of C(k) over resamples of the prompts, every run resampled at the same prompts.

    base, full: (S, n) per-prompt rewards of S seeds (the same prompts in every seed, so one prompt resample
    serves all seeds); layers: (S, L, n) with nan where a run is missing. Each resample computes C per seed
    and block and averages over the seeds that have it, as the point estimate does; resamples where a seed's
    full run does not beat its base leave that seed out. Returns (low (L,), high (L,)).
    """
    base, full, layers = (np.asarray(x, dtype=float) for x in (base, full, layers))
    rng = np.random.default_rng(seed)
    draws = np.empty((n, layers.shape[1]))
    tail = (1.0 - level) / 2 * 100
    # a block no seed has a run for (yet) is all-nan: its draws and interval are nan, without numpy's warnings
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for b, idx in enumerate(rng.integers(0, base.shape[1], (n, base.shape[1]))):
            s_base, s_full = base[:, idx].mean(axis=1), full[:, idx].mean(axis=1)       # (S,)
            gain = np.where(s_full - s_base > MIN_GAIN, s_full - s_base, np.nan)[:, None]
            c = (layers[:, :, idx].mean(axis=2) - s_base[:, None]) / gain               # (S, L)
            draws[b] = np.nanmean(c, axis=0)
        low, high = np.nanpercentile(draws, [tail, 100 - tail], axis=0)
    return low, high


def prompt_split_agreement(base, full, layers) -> tuple[float, float]:
    """Does the C ranking replicate on other prompts? (same seed, across seeds): the Spearman of C computed on the
    even-numbered prompts against C on the odd-numbered ones, within each seed and between every two seeds (both
    ways), each averaged. Seeds scored on one prompt set can agree on which of its prompts each block flips
    without the ranking holding on new prompts; a low value within seeds says the blocks' differences drown in
    eval noise (more eval prompts or a longer run help), a high one within and a low one across says the seeds
    trained different profiles (more seeds help).

    base, full: (S, n) per-prompt rewards; layers: (S, L, n), nan where a run is missing: only blocks every seed
    has count. nan without 3 such blocks, or where a half's full run did not beat its base.
    """
    base, full, layers = (np.asarray(x, dtype=float) for x in (base, full, layers))
    layers = layers[:, ~np.isnan(layers).any(axis=(0, 2))]
    if layers.shape[1] < 3:
        return float("nan"), float("nan")

    def c(s: int, half: slice) -> np.ndarray:
        gain = full[s, half].mean() - base[s, half].mean()
        return (layers[s, :, half].mean(axis=1) - base[s, half].mean()) / gain if gain > MIN_GAIN else None

    even, odd = slice(0, None, 2), slice(1, None, 2)
    halves = [(c(s, even), c(s, odd)) for s in range(len(base))]

    def mean_rho(pairs) -> float:
        values = [spearman(a, b) for a, b in pairs if a is not None and b is not None]
        values = [v for v in values if np.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")

    within = mean_rho(halves)
    across = mean_rho([(a[i], b[1 - i]) for a, b in itertools.combinations(halves, 2) for i in (0, 1)])
    return within, across


def spearman_brown(r: float, factor: float) -> float:
    """Reliability of the mean of `factor` parallel measurements, each of reliability r: f·r / (1 + (f-1)·r);
    nan for r < 0, seeds that disagree (where the formula gives values below -1, or divides by zero). Example:
    `spearman_brown(0.5, 3)` -> 0.75."""
    if not np.isfinite(r) or r < 0:
        return float("nan")
    return float(factor * r / (1.0 + (factor - 1.0) * r))


def noise_ceiling(seed_agreement: float, n_seeds: int) -> float:
    """The highest correlation any predictor can expect with the seed-mean C: sqrt of its Spearman-Brown
    reliability, from the mean pairwise seed-to-seed Spearman (a perfect predictor is the noise-free profile,
    whose correlation with a measurement of reliability R is sqrt(R)). nan when the seeds do not agree at all
    (<= 0). Example: `noise_ceiling(0.5, 3)` -> sqrt(0.75) = 0.866."""
    if not np.isfinite(seed_agreement) or seed_agreement <= 0:
        return float("nan")
    return float(np.sqrt(spearman_brown(seed_agreement, n_seeds)))


def spearman(pred, true) -> float:
    """Spearman rank correlation of (L,) vectors; nan when either is constant or L < 2 (no ranking to compare)."""
    from scipy.stats import spearmanr

    if _unrankable(pred, true):
        return float("nan")
    return float(spearmanr(pred, true).statistic)


def kendall(pred, true) -> float:
    """Kendall's tau-b of (L,) vectors; nan when either is constant or L < 2."""
    from scipy.stats import kendalltau

    if _unrankable(pred, true):
        return float("nan")
    return float(kendalltau(pred, true).statistic)


def _unrankable(pred, true) -> bool:
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    return len(true) < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0


def top_indices(scores, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; ties go to the shallower block (as ranking.py). (L,) -> (k,)"""
    scores = np.asarray(scores, dtype=float)
    if not 1 <= k <= len(scores):
        raise LayerscoutError(f"k must be in 1..{len(scores)} (the number of layers); got {k}")
    return np.lexsort((np.arange(len(scores)), -scores))[:k]


def top1_recovered(pred, true_c) -> float:
    """C(predicted best layer) / max C: 1 = the prediction found the best layer; nan when max C <= 0
    (no layer helps, so no share of the best to recover). (L,), (L,) -> float"""
    true_c = np.asarray(true_c, dtype=float)
    best = true_c.max()
    if best <= 0:
        return float("nan")
    return float(true_c[top_indices(pred, 1)[0]] / best)


def top1_regret(pred, true_c) -> float:
    """C(best layer) - C(layer the prediction ranks first): 0 = the best layer was picked; in units of the full
    run's gain. (L,), (L,) -> float"""
    true_c = np.asarray(true_c, dtype=float)
    return float(true_c.max() - true_c[top_indices(pred, 1)[0]])


def topk_overlap(pred, true, k: int) -> float:
    """|top-k(pred) ∩ top-k(true)| / k, in [0, 1]. (L,), (L,) -> float"""
    return len(set(top_indices(pred, k).tolist()) & set(top_indices(true, k).tolist())) / k


def ndcg(pred, true, k: int) -> float:
    """NDCG@k of ranking layers by `pred`, with gains C - min(C).

    NDCG needs non-negative gains and C may be negative (a layer that hurts), so C is shifted to make the
    worst layer's gain 0; the shift keeps the order of C and the differences between layers. (L,), (L,) -> float
    """
    from sklearn.metrics import ndcg_score

    true = np.asarray(true, dtype=float)
    if len(true) < 2:
        raise LayerscoutError("NDCG needs at least 2 layers")
    return float(ndcg_score([true - true.min()], [np.asarray(pred, dtype=float)], k=k))


def bootstrap_ci(metric: Metric, pred, true, n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `metric(pred[idx], true[idx])` over `n` resamples of the layers with
    replacement. Resamples where the metric is undefined (nan, e.g. a constant resample) are dropped;
    (nan, nan) if none is defined. (L,), (L,) -> (low, high)"""
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    rng = np.random.default_rng(seed)
    values = np.array([metric(pred[idx], true[idx]) for idx in rng.integers(0, len(true), (n, len(true)))])
    return _interval(values, level)


def random_expectation(metric: Metric, true, n: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, float]:
    """What a random ranking scores: the metric's mean over `n` random permutations used as predictions, and
    the central `level` range of that distribution. (L,) -> (mean, low, high)"""
    true = np.asarray(true, dtype=float)
    rng = np.random.default_rng(seed)
    values = np.array([metric(rng.permutation(len(true)).astype(float), true) for _ in range(n)])
    finite = values[np.isfinite(values)]
    return (float(finite.mean()) if finite.size else float("nan"), *_interval(values, level))


def seed_spearman(c_by_seed) -> float:
    """Mean pairwise Spearman of C across seeds: how well the ground truth agrees with itself, a ceiling for
    any predictor. (S, L) -> float; nan with fewer than 2 seeds."""
    rows = np.asarray(c_by_seed, dtype=float)
    values = [spearman(a, b) for a, b in itertools.combinations(rows, 2)]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)

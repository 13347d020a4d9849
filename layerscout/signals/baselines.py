"""Zero-cost baselines that need no rollouts: a depth prior (middle of the stack; the study's best blocks sit
at 37-59 % of depth) and Spectrum's weight-only SNR (arXiv 2406.06623): per matrix, noise σ = IQR(s)/1.349
of the singular values s, Marchenko-Pastur edge σ(1+√β), SNR = Σ s above / Σ s below, divided by max s.
Cost: one `svdvals` per 2-D weight matrix in the blocks; no forward pass.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..passes import register_pass
from . import register_signal


def depth_prior(n_layers: int) -> np.ndarray:
    """1 at the middle block, falling linearly to 0 at both ends. (n_layers,)"""
    if n_layers == 1:
        return np.ones(1)
    return 1.0 - np.abs(2 * np.arange(n_layers) - (n_layers - 1)) / (n_layers - 1)  # integers: mirror blocks tie


def depth_residual(values: np.ndarray) -> np.ndarray:
    """What a signal says beyond depth: log(values) minus its least-squares line in relative depth (0 .. 1) over
    the model's blocks (plain values when any is <= 0). Pre-LN stacks grow gradient and activation scales with
    depth, so raw per-block statistics partly rank by position; the residual keeps the rest. (L,) -> (L,)."""
    v = np.asarray(values, dtype=float)
    y = np.log(v) if (v > 0).all() else v
    if len(y) < 3:
        return y - y.mean()
    d = np.linspace(0.0, 1.0, len(y))
    slope, intercept = np.polyfit(d, y, 1)
    return y - (slope * d + intercept)


def spectrum_snr(weight: torch.Tensor) -> float:
    """Spectrum's snr_ratio of one (n, m) matrix; inf when nothing falls below the edge."""
    s = torch.linalg.svdvals(weight.detach().double())
    q75, q25 = torch.quantile(s, 0.75), torch.quantile(s, 0.25)
    sigma = float(q75 - q25) / 1.349
    n, m = weight.shape
    beta = min(n, m) / max(n, m)
    edge = sigma * (1.0 + beta ** 0.5)
    signal, noise = float(s[s > edge].sum()), float(s[s <= edge].sum())
    snr = signal / noise if noise != 0 else float("inf")
    return snr / float(s[0])


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties averaged); a constant vector maps to 0.5 everywhere. (L,) -> (L,)"""
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=float)
    if len(values) == 1 or np.all(values == values[0]):
        return np.full(len(values), 0.5)
    return (rankdata(values) - 1) / (len(values) - 1)


@register_pass("depth", "number of decoder blocks (no model access beyond that)", needs=())
def depth_pass(ctx) -> int:
    return ctx.n_layers


@register_pass("spectrum", "Spectrum's weight SNR of every 2-D weight, by module type and block", needs=())
def spectrum_pass(ctx) -> dict[str, np.ndarray]:
    by_type: dict[str, list[float]] = defaultdict(lambda: [np.nan] * ctx.n_layers)
    for k, block in enumerate(ctx.bar(ctx.blocks, "spectrum")):
        for name, p in block.named_parameters():
            if p.ndim == 2:
                by_type[name][k] = spectrum_snr(p)
    return {name: np.asarray(v) for name, v in by_type.items()}


@register_signal("depth_prior", "baseline: 1 at the middle block, 0 at the ends (no model access)", needs=("depth",))
def depth_prior_signal(depth: int) -> np.ndarray:
    return depth_prior(depth)


@register_signal("spectral_snr", "baseline: Spectrum weight SNR, percentile within each module type, averaged",
                 needs=("spectrum", "depth"))
def spectral_snr(spectrum: dict[str, np.ndarray], depth: int) -> np.ndarray:
    ranks = [percentile_ranks(v) for v in spectrum.values() if not np.isnan(v).any()]
    return np.mean(ranks, axis=0) if ranks else np.full(depth, 0.5)

"""Per-block gradient signals from one per-sample backward sweep over the rollouts.

grad_norm ||∇_k J|| of the GRPO objective J = Σ_i c_i Σ_t log p(y_it) (c_i from rollouts.sequence_weights);
fisher_trace (1/N) Σ_i ||∇_k log p(y_i|x_i)||² (empirical Fisher); grad_snr ||mean_m g_m||² / var_m(g_m)
over prompt groups m (each group's own estimate of ∇J). Sources: policy-gradient theorem; Auto-RGN
(||g||/||θ||); gradient-noise-scale literature. Cost: one backward per sampled sequence (N = prompts × G).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import register_signal


@dataclass
class GradientStats:
    """Reductions of the sweep, all (n_layers,) unless noted. `total` and `probe` are per-parameter
    gradients of J (all groups / the probe groups only), kept for the update and lookahead signals."""

    pg_sq_norm: np.ndarray          # ||∇_k J||²
    fisher: np.ndarray              # (1/N) Σ_i ||∇_k log p_i||²
    group_sq_norms: np.ndarray      # (M, n_layers): ||g_m||² with g_m = M × group m's share of ∇J
    param_count: np.ndarray
    weight_norm: np.ndarray
    total: dict[torch.nn.Parameter, torch.Tensor]
    probe: dict[torch.nn.Parameter, torch.Tensor]


def gradient_snr(group_sq_norms: np.ndarray, mean_sq_norm: np.ndarray) -> np.ndarray:
    """SNR of one group's gradient estimate: ||ḡ||² / (1/(M-1)) Σ_m ||g_m - ḡ||².

    group_sq_norms (M, L) = ||g_m||², mean_sq_norm (L,) = ||ḡ||², using Σ||g_m - ḡ||² = Σ||g_m||² - M||ḡ||².
    Zero variance with a non-zero mean gives inf; an all-zero gradient gives 0.
    """
    m = group_sq_norms.shape[0]
    if m < 2:
        raise ValueError("gradient SNR needs at least 2 groups")
    var = np.clip(group_sq_norms.sum(axis=0) - m * mean_sq_norm, 0.0, None) / (m - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(var > 0, mean_sq_norm / np.where(var > 0, var, 1.0), np.where(mean_sq_norm > 0, np.inf, 0.0))
    return snr


def layer_sq_norms(tensors_by_layer: list[list[torch.Tensor | None]]) -> np.ndarray:
    """Σ of squared entries per layer; None (no gradient reached the parameter) counts as zero."""
    return np.array([sum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2 for t in ts if t is not None)
                     for ts in tensors_by_layer])


def gradient_pass(state) -> GradientStats:
    """One backward per sequence: Fisher needs per-sample gradients; the same gradients, weighted by c_i and
    summed per prompt group, give ∇J, its group-to-group noise and the probe-half gradient for lookahead."""
    ro, params = state.rollouts, state.block_params
    flat = [p for ps in params for p in ps]
    total = {p: torch.zeros_like(p, dtype=torch.float32) for p in flat}
    probe = {p: torch.zeros_like(p, dtype=torch.float32) for p in flat}
    weights = state.weights
    n, m_groups = ro.input_ids.shape[0], ro.num_groups
    fisher = np.zeros(state.n_layers)
    group_sq = np.zeros((m_groups, state.n_layers))
    probe_groups = set(state.probe_groups)
    for m in range(m_groups):
        group_grad = {p: torch.zeros_like(p, dtype=torch.float32) for p in flat}
        for i in torch.nonzero(ro.group == m).flatten().tolist():
            for p in flat:
                p.grad = None
            state.sequence_logp(i).backward()
            state.cost.backward(1, int(ro.attention_mask[i].sum()))
            grads = [[p.grad for p in ps] for ps in params]
            fisher += layer_sq_norms(grads)
            for p in flat:
                if p.grad is not None:
                    group_grad[p].add_(p.grad.float(), alpha=float(weights[i]))
        group_sq[m] = layer_sq_norms([[group_grad[p] * m_groups for p in ps] for ps in params])
        for p in flat:
            total[p] += group_grad[p]
            if m in probe_groups:
                probe[p] += group_grad[p]
        state.tick()
    for p in flat:
        p.grad = None
    pg_sq = layer_sq_norms([[total[p] for p in ps] for ps in params])
    if not (np.isfinite(pg_sq).all() and np.isfinite(fisher).all()):
        from ..errors import LayerscoutError
        raise LayerscoutError("NaN/inf gradients in the probe: try --dtype float32 or a smaller lookahead/learning rate")
    return GradientStats(
        pg_sq_norm=pg_sq, fisher=fisher / n, group_sq_norms=group_sq,
        param_count=np.array([sum(p.numel() for p in ps) for ps in params], dtype=float),
        weight_norm=np.sqrt(layer_sq_norms([[p.detach() for p in ps] for ps in params])),
        total=total, probe=probe)


@register_signal("grad_norm", "||∇_k J||: policy-gradient norm of block k")
def grad_norm(state) -> np.ndarray:
    return np.sqrt(state.gradients.pg_sq_norm)


@register_signal("grad_norm_per_param", "||∇_k J|| / sqrt(#params of block k): RMS gradient entry")
def grad_norm_per_param(state) -> np.ndarray:
    g = state.gradients
    return np.sqrt(g.pg_sq_norm) / np.sqrt(g.param_count)


@register_signal("grad_norm_rel", "||∇_k J|| / ||θ_k||: gradient relative to weight norm (Auto-RGN)")
def grad_norm_rel(state) -> np.ndarray:
    g = state.gradients
    return np.sqrt(g.pg_sq_norm) / np.maximum(g.weight_norm, 1e-12)


@register_signal("fisher_trace", "(1/N) Σ_i ||∇_k log p(y_i|x_i)||²: empirical Fisher trace of block k")
def fisher_trace(state) -> np.ndarray:
    return state.gradients.fisher


@register_signal("grad_snr", "||mean_m g_m||² / var_m g_m across prompt groups: gradient signal-to-noise")
def grad_snr(state) -> np.ndarray:
    g = state.gradients
    return gradient_snr(g.group_sq_norms, g.pg_sq_norm)

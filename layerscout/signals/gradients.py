"""Per-block gradient signals from one batched backward sweep over the rollouts: `policy_grad` (∇J alone, plain
autograd) or `grad_sweep` (∇J plus per-sample and per-group norms from hooks; it covers policy_grad).

grad_norm ||∇_k J|| of the GRPO objective J = Σ_i c_i Σ_t log p(y_it) (c_i from grpo.sequence_weights);
fisher_trace (1/N) Σ_i ||∇_k log p(y_i|x_i)||² (empirical Fisher); grad_snr ||mean_m g_m||² / var_m(g_m) over prompt
groups m (each group's own estimate of ∇J). Sources: policy-gradient theorem; Auto-RGN (||g||/||θ||);
gradient-noise-scale literature. Cost: one forward+backward per micro-batch of whole prompt groups, i.e. one
rollout-batch equivalent; per-sample norms come from hooks (persample.py), not from batch-1 passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import LayerscoutError
from ..models import num_parameters
from ..passes import block_params_require_grad, checkpointed, register_pass
from ..persample import BlockGradients
from . import register_signal


@dataclass
class GradientSweep:
    """Reductions of the sweep, all (n_layers,) unless noted, plus two per-parameter tensors kept for later passes
    until `release()`: `total` = ∇J in fp32 (all groups), `probe_sign` = sign of the probe groups' ∇J (int8).
    `fisher` and `group_sq_norms` only from the `grad_sweep` pass (None from `policy_grad`)."""

    pg_sq_norm: np.ndarray          # ||∇_k J||²
    param_count: np.ndarray
    weight_norm: np.ndarray
    taylor: np.ndarray              # Σ_k |θ ⊙ ∇J|
    fisher: np.ndarray | None = None            # (1/N) Σ_i ||∇_k log p_i||²
    group_sq_norms: np.ndarray | None = None    # (M, n_layers): ||g_m||² with g_m = M × group m's share of ∇J
    total: dict[torch.nn.Parameter, torch.Tensor] | None = None
    probe_sign: dict[torch.nn.Parameter, torch.Tensor] | None = None

    def release(self) -> None:
        self.total = self.probe_sign = None


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


def isotropic_natural_norm(pg_sq_norm: np.ndarray, fisher: np.ndarray, param_count: np.ndarray) -> np.ndarray:
    """gᵀF⁻¹g per block with F_k approximated by (tr F_k / d_k)·I: ||g_k||² · d_k / tr F_k. The reward a step buys
    per unit of KL (a natural-gradient step of KL ε gains sqrt(2ε · gᵀF⁻¹g)); 0 where the Fisher trace is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(fisher > 0, pg_sq_norm * param_count / np.where(fisher > 0, fisher, 1.0), 0.0)


def block_sq_norms(tensors: dict, blocks) -> torch.Tensor:
    """Σ of squared entries of each block's tensors (keyed by parameter), as one (L,) fp64 tensor on their device."""
    return torch.stack([sum(tensors[p].double().square().sum() for p in b.parameters()) for b in blocks])


def _summary(ctx, total: dict, probe_sign: dict, **stats) -> GradientSweep:
    """The per-block reductions of ∇J (`total`, fp32 per parameter) that every gradient signal reads."""
    pg_sq = block_sq_norms(total, ctx.blocks).cpu().numpy()
    if not (np.isfinite(pg_sq).all() and all(np.isfinite(v).all() for v in stats.values())):
        raise LayerscoutError("NaN/inf gradients in the probe: try --dtype float32 or a smaller lookahead/learning rate")
    weights = {p: p.detach() for b in ctx.blocks for p in b.parameters()}
    return GradientSweep(
        pg_sq_norm=pg_sq,
        param_count=np.array([num_parameters(b) for b in ctx.blocks], dtype=float),
        weight_norm=np.sqrt(block_sq_norms(weights, ctx.blocks).cpu().numpy()),
        taylor=torch.stack([sum((total[p].double() * p.detach().double()).abs().sum() for p in b.parameters())
                            for b in ctx.blocks]).cpu().numpy(),
        total=total, probe_sign=probe_sign, **stats)


def _keeps_sign(ctx) -> bool:
    """Whether a ∇J pass keeps the probe groups' sign(∇J) (an int8 copy of every block parameter): only the
    lookahead reads it."""
    return ctx.planned is None or "lookahead" in ctx.planned


@register_pass("policy_grad", "∇J per block: one plain backward per micro-batch of whole prompt groups")
def policy_gradient(ctx) -> GradientSweep:
    """∇J = ∇ Σ_i c_i log p(y_i) by ordinary autograd (no per-sample hooks), probe groups first; after them the sign
    of their ∇J is kept if the lookahead will run. Each parameter's gradient is added into its fp32 accumulator and
    freed as soon as autograd has it, so no second copy of the blocks' gradients is ever held. What grad_norm,
    taylor_saliency, the update steps and the lookahead need; about half the grad_sweep's time on the organism."""
    ro = ctx.rollouts
    probe_sign = None

    def into_total(p):
        total[p].add_(p.grad.float())
        p.grad = None

    with block_params_require_grad(ctx.blocks) as params, \
            checkpointed(ctx.blocks, ctx.config.gradient_checkpointing, reentrant=False):
        total = {p: torch.zeros_like(p, dtype=torch.float32) for p in params}
        hooks = [p.register_post_accumulate_grad_hook(into_total) for p in params]
        try:
            for part in (ctx.probe_groups, ctx.heldout_groups):
                for rows, _ in ctx.bar(ctx.group_batches(part), "gradients"):
                    w = ctx.weights[rows].to(ctx.device, torch.float32)
                    (ctx.logps(ro, rows).sum(dim=1) * w).sum().backward()
                    ctx.cost.backward(1, int(ro.attention_mask[rows].sum()))
                if probe_sign is None and _keeps_sign(ctx):
                    probe_sign = {p: g.sign().to(torch.int8) for p, g in total.items()}
        finally:
            for h in hooks:
                h.remove()
    return _summary(ctx, total, probe_sign)


@register_pass("grad_sweep", "∇J, per-sample and per-group squared gradient norms per block", covers=("policy_grad",))
def gradient_sweep(ctx) -> GradientSweep:
    """Backward of Σ_i log p(y_i) over micro-batches of whole groups, probe groups first. Hooks weight each sequence's
    gradient by c_i into ∇J and take per-sample (Fisher) and per-group (SNR) squared norms; after the probe groups,
    the sign of their ∇J is kept if the lookahead will run (an int8 copy of every block parameter)."""
    ro = ctx.rollouts
    probe_sign = None
    with BlockGradients(ctx.blocks, num_groups=ro.num_groups, per_sample=True) as bg, \
            checkpointed(ctx.blocks, ctx.config.gradient_checkpointing):
        for part in (ctx.probe_groups, ctx.heldout_groups):
            for rows, groups in ctx.bar(ctx.group_batches(part), "gradients"):
                logps = ctx.logps(ro, rows)
                bg.backward(logps.sum(), scale=ctx.weights[rows].to(ctx.device, torch.float32), groups=groups)
                ctx.cost.backward(1, int(ro.attention_mask[rows].sum()))
            if probe_sign is None and _keeps_sign(ctx):
                probe_sign = {p: g.sign().to(torch.int8) for p, g in bg.grads.items()}
    m = ro.num_groups
    return _summary(ctx, bg.grads, probe_sign, fisher=bg.sample_sq.cpu().numpy() / ro.input_ids.shape[0],
                    group_sq_norms=bg.group_sq.cpu().numpy() * m * m)


@register_signal("grad_norm", "||∇_k J||: policy-gradient norm of block k", needs=("policy_grad",))
def grad_norm(policy_grad: GradientSweep) -> np.ndarray:
    return np.sqrt(policy_grad.pg_sq_norm)


@register_signal("grad_norm_per_param", "||∇_k J|| / sqrt(#params of block k): RMS gradient entry",
                 needs=("policy_grad",))
def grad_norm_per_param(policy_grad: GradientSweep) -> np.ndarray:
    return np.sqrt(policy_grad.pg_sq_norm) / np.sqrt(policy_grad.param_count)


@register_signal("grad_norm_rel", "||∇_k J|| / ||θ_k||: gradient relative to weight norm (Auto-RGN)",
                 needs=("policy_grad",))
def grad_norm_rel(policy_grad: GradientSweep) -> np.ndarray:
    return np.sqrt(policy_grad.pg_sq_norm) / np.maximum(policy_grad.weight_norm, 1e-12)


@register_signal("fisher_trace", "(1/N) Σ_i ||∇_k log p(y_i|x_i)||²: empirical Fisher trace of block k",
                 needs=("grad_sweep",))
def fisher_trace(grad_sweep: GradientSweep) -> np.ndarray:
    return grad_sweep.fisher


@register_signal("grad_snr", "||mean_m g_m||² / var_m g_m across prompt groups: gradient signal-to-noise",
                 needs=("grad_sweep",))
def grad_snr(grad_sweep: GradientSweep) -> np.ndarray:
    return gradient_snr(grad_sweep.group_sq_norms, grad_sweep.pg_sq_norm)


@register_signal("taylor_saliency", "Σ |θ · ∇_θ J| over block k's weights: first-order Taylor importance of the block's "
                 "own weights", needs=("policy_grad",))
def taylor_saliency(policy_grad: GradientSweep) -> np.ndarray:
    return policy_grad.taylor


@register_signal("natural_grad", "gᵀF⁻¹g of block k, Fisher approximated as (tr F_k / #params)·I: reward per unit "
                 "of KL", needs=("grad_sweep",))
def natural_grad(grad_sweep: GradientSweep) -> np.ndarray:
    return isotropic_natural_norm(grad_sweep.pg_sq_norm, grad_sweep.fisher, grad_sweep.param_count)

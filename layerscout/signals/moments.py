"""Per-parameter statistics of the prompt groups' gradients (the `group_moments` pass), reduced per block:

zico: log Σ_θ mean_m|g_mθ| / std_m(g_mθ), ZiCo's per-layer score (Li et al., ICLR 2023) with prompt groups in the
role of its mini-batches: a block whose parameters get large, consistent gradients scores high.
natural_grad_diag: gᵀF⁻¹g with a diagonal Fisher estimated from the groups, F_θ = mean_m g_mθ², ḡ = mean_m g_m = ∇J:
Σ_θ ḡ_θ² / F_θ, the reward a step buys per unit of KL (natural_grad's isotropic F per block, per parameter here).
g_m = M × group m's share of ∇J, as in grad_snr. Cost: one forward+backward over the rollouts (one call per group)
and three fp32 copies of the blocks' parameters while it runs (not in the default probe).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..passes import block_params_require_grad, checkpointed, register_pass
from . import register_signal


@dataclass
class GroupMoments:
    zico: np.ndarray                # (n_layers,)
    natural_diag: np.ndarray        # (n_layers,)


def zico_score(s0: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, m: int) -> float:
    """log Σ_θ mean|g| / std(g) over the parameters whose group gradients vary (std > 0), from the sums over M
    groups s0 = Σ g, s1 = Σ |g|, s2 = Σ g² (population std); -inf when none varies.

    >>> zico_score(torch.tensor([2., 0.]), torch.tensor([2., 2.]), torch.tensor([2., 2.]), 2)  # θ0: g = 1, 1 (no spread); θ1: 1, -1
    0.0
    """
    s0, s1, s2 = s0.double(), s1.double(), s2.double()
    var = (s2 / m - (s0 / m) ** 2).clamp_min(0)
    ok = var > 0
    total = float(((s1 / m)[ok] / var[ok].sqrt()).sum())
    return float(np.log(total)) if total > 0 else float("-inf")


def diagonal_natural_norm(s0: torch.Tensor, s2: torch.Tensor, m: int) -> float:
    """Σ_θ ḡ_θ² / F_θ with ḡ = s0/M and F = s2/M, over parameters with F > 0.

    >>> diagonal_natural_norm(torch.tensor([2., 0., 0.]), torch.tensor([4., 2., 0.]), 2)  # 1/2 + 0
    0.5
    """
    fisher = s2.double() / m
    ok = fisher > 0
    return float(((s0.double() / m)[ok] ** 2 / fisher[ok]).sum())


@register_pass("group_moments", "per-parameter moments of the prompt groups' gradients (ZiCo, diagonal Fisher)")
def group_moments(ctx) -> GroupMoments:
    ro = ctx.rollouts
    m = ro.num_groups
    with block_params_require_grad(ctx.blocks) as params, checkpointed(ctx.blocks, ctx.config.gradient_checkpointing,
                                                          reentrant=False):
        s0, s1, s2 = ({p: torch.zeros_like(p, dtype=torch.float32) for p in params} for _ in range(3))
        for rows, spans in ctx.bar(ctx.group_batches(range(m)), "group moments"):
            w = ctx.weights[rows].to(ctx.device, torch.float32) * m
            per_seq = ctx.logps(ro, rows).sum(dim=1) * w
            for i, (_, span) in enumerate(spans):
                grads = torch.autograd.grad(per_seq[span].sum(), params, retain_graph=i < len(spans) - 1,
                                            allow_unused=True)
                for p, g in zip(params, grads):
                    if g is not None:
                        g = g.float()
                        s0[p].add_(g)
                        s1[p].add_(g.abs())
                        s2[p].add_(g.square())
            ctx.cost.backward(len(spans), int(ro.attention_mask[rows].sum()))

    zico, natural = [], []
    for b in ctx.blocks:
        a, s, q = (torch.cat([t[p].flatten() for p in b.parameters()]) for t in (s0, s1, s2))
        zico.append(zico_score(a, s, q, m))
        natural.append(diagonal_natural_norm(a, q, m))
    return GroupMoments(zico=np.array(zico), natural_diag=np.array(natural))


@register_signal("zico", "ZiCo: log Σ mean|g|/std(g) of block k's parameters over prompt-group gradients",
                 needs=("group_moments",))
def zico(group_moments: GroupMoments) -> np.ndarray:
    return group_moments.zico


@register_signal("natural_grad_diag", "gᵀF⁻¹g of block k with a diagonal Fisher from the prompt groups' gradients",
                 needs=("group_moments",))
def natural_grad_diag(group_moments: GroupMoments) -> np.ndarray:
    return group_moments.natural_diag

"""The GRPO maths on one round of rollouts, as pure functions of tensors: group-relative advantages (GRPO:
(r - mean)/(std + 1e-4) with torch's unbiased std, as TRL; Dr. GRPO: r - mean), the per-sequence weights that
reproduce TRL's loss normalisation, and the (clipped) importance-weighted surrogate objective. Sources: DeepSeekMath
(GRPO), Liu et al. 2025 (Dr. GRPO), TRL's GRPOTrainer. Cost: negligible next to any forward pass.
"""

from __future__ import annotations

import torch

from .errors import LayerscoutError

ADV_EPS = 1e-4  # TRL's constant in (r - mean) / (std + eps)


def group_advantages(rewards: torch.Tensor, group_size: int, loss_type: str = "grpo") -> torch.Tensor:
    """rewards (N,) laid out group after group, N = groups * group_size -> advantages (N,).

    >>> group_advantages(torch.tensor([1., 0., 0., 0.]), 2, "dr_grpo")
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if not torch.isfinite(rewards).all():
        raise LayerscoutError("the reward function returned NaN or inf")
    r = rewards.view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if loss_type == "grpo":
        adv = adv / (r.std(dim=1, keepdim=True) + ADV_EPS)
    return adv.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> list[int]:
    """Indices of the prompt groups whose completions got different rewards: the only ones with non-zero
    advantages, so the only ones that carry a policy gradient. rewards (N,) group after group.

    >>> informative_groups(torch.tensor([1., 0., 1., 1.]), 2)
    [0]
    """
    r = rewards.view(-1, group_size)
    return torch.nonzero(r.amax(dim=1) > r.amin(dim=1)).flatten().tolist()


def sequence_weights(advantages: torch.Tensor, completion_mask: torch.Tensor, loss_type: str,
                     max_completion_length: int) -> torch.Tensor:
    """Per-sequence weight c_i with objective J = sum_i c_i * sum_t logp_it, matching TRL's loss normalisation.

    grpo (and gigpo, which normalises as GRPO): c_i = A_i / (|y_i| * N) (token mean per sequence, then mean over
    sequences); dr_grpo: c_i = A_i / (N * max_completion_length) (a constant normaliser, no length bias).
    advantages (N,), completion_mask (N, T) -> (N,)
    """
    n = advantages.numel()
    if loss_type in ("grpo", "gigpo"):
        return advantages / (completion_mask.sum(dim=1).clamp(min=1) * n)
    return advantages / (n * max_completion_length)


def surrogate_objective(logps: torch.Tensor, old_logps: torch.Tensor, completion_mask: torch.Tensor,
                        weights: torch.Tensor, clip_eps: float | None = None) -> torch.Tensor:
    """Importance-weighted advantage J = sum_i c_i * sum_t ratio_it (clipped as PPO/GRPO when clip_eps is set).

    logps, old_logps, completion_mask: (N, T); weights c_i (N,). At logps == old_logps the gradient equals
    the policy gradient sum_i c_i * grad(sum_t logp_it).
    """
    ratio = torch.exp(logps - old_logps)
    w = weights[:, None]
    per_token = ratio * w
    if clip_eps is not None:
        per_token = torch.minimum(per_token, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * w)
    return (per_token * completion_mask).sum()

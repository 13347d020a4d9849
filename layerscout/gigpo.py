"""GiGPO advantages (Feng et al. 2025, "Group-in-Group Policy Optimization for LLM Agent Training"; verl-agent):
an episode advantage A^E over the N episodes of one game, normalised as GRPO / Dr. GRPO normalise a prompt group,
plus a step advantage A^S over anchor-state groups: all steps taken from the same environment state anywhere in
that game's N episodes, scored by their discounted return (gamma = 0.95) and normalised within the group.
A = A^E + omega * A^S (omega = 1). A step whose state occurs nowhere else gets A^S = 0, so without repeated
states GiGPO is GRPO on whole episodes. Pure tensor maths: microseconds per batch.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Hashable, Sequence

import torch

from .errors import LayerscoutError
from .grpo import group_advantages

GAMMA = 0.95
OMEGA = 1.0


def discounted_returns(rewards: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """Step rewards (T,) of one episode -> returns (T,) with G_t = r_t + gamma * G_{t+1}.

    >>> discounted_returns(torch.tensor([0., 0., 1.]), 0.5)
    tensor([0.2500, 0.5000, 1.0000])
    """
    out = torch.empty_like(rewards, dtype=torch.float32)
    running = 0.0
    for t in range(rewards.numel() - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def step_advantages(returns: torch.Tensor, anchors: Sequence[Hashable], loss_type: str = "grpo") -> torch.Tensor:
    """returns (S,), anchors: S hashable state keys -> A^S (S,).

    Steps with equal anchors form one group, normalised with `group_advantages` (grpo: (G - mean) / (std + 1e-4),
    unbiased std; dr_grpo: G - mean); a step alone in its group gets 0.
    >>> step_advantages(torch.tensor([1., 0., 5.]), ["a", "a", "b"], "dr_grpo")
    tensor([ 0.5000, -0.5000,  0.0000])
    """
    if returns.numel() != len(anchors):
        raise ValueError(f"{returns.numel()} returns but {len(anchors)} anchors")
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(anchors):
        members[key].append(i)
    out = torch.zeros(returns.numel(), dtype=torch.float32)
    for idx in members.values():
        if len(idx) > 1:
            out[idx] = group_advantages(returns[idx].float(), len(idx), loss_type)
    return out


def anchor_keys(anchors: Sequence[Sequence[Hashable]], group_size: int) -> list[tuple[int, Hashable]]:
    """Flattened (game group, state) keys of every step: equal states of different games never group."""
    return [(e // group_size, key) for e, keys in enumerate(anchors) for key in keys]


def anchor_share(anchors: Sequence[Sequence[Hashable]], group_size: int) -> float:
    """Share of steps whose anchor group has another member (0 = no repeated state: GiGPO is GRPO)."""
    counts = Counter(anchor_keys(anchors, group_size))
    return sum(c for c in counts.values() if c > 1) / max(1, sum(counts.values()))


def gigpo_advantages(step_rewards: Sequence[torch.Tensor], anchors: Sequence[Sequence[Hashable]], group_size: int,
                     loss_type: str = "grpo", gamma: float = GAMMA, omega: float = OMEGA) -> torch.Tensor:
    """Per-step advantages A = A^E + omega * A^S of N = groups * group_size episodes, laid out group after group
    (the group_size episodes of one game next to each other).

    step_rewards[e]: (T_e,) rewards of episode e's steps (a final success reward sits on its last step);
    anchors[e]: T_e hashable keys of the states the steps were taken from. Returns (S,) with S = sum_e T_e,
    episode after episode. A^E normalises each episode's total reward within its game group; A^S normalises the
    discounted return from each step within its (game group, state) group. omega = 0 gives GRPO on episodes.
    """
    if len(step_rewards) != len(anchors):
        raise ValueError(f"{len(step_rewards)} episodes of rewards but {len(anchors)} of anchors")
    lengths = [r.numel() for r in step_rewards]
    if any(n != len(a) for n, a in zip(lengths, anchors)):
        raise ValueError("every episode needs one anchor per step")
    if min(lengths, default=0) < 1:
        raise LayerscoutError("every episode needs at least one step")
    totals = torch.stack([r.float().sum() for r in step_rewards])
    episode = group_advantages(totals, group_size, loss_type).repeat_interleave(torch.tensor(lengths))
    returns = torch.cat([discounted_returns(r, gamma) for r in step_rewards])
    return episode + omega * step_advantages(returns, anchor_keys(anchors, group_size), loss_type)


def informative_steps(step_rewards: Sequence[torch.Tensor], anchors: Sequence[Sequence[Hashable]], group_size: int,
                      gamma: float = GAMMA, omega: float = OMEGA) -> torch.Tensor:
    """(S,) bool, laid out as gigpo_advantages: True where a step's advantage can be non-zero, i.e. the episode totals
    of its game group differ, or (omega != 0) the returns in its anchor group differ. Exact where the advantages
    themselves only tell "non-zero" up to rounding (the mean of equal floats need not equal them).

    >>> informative_steps([torch.tensor([0., 1.]), torch.tensor([0., 1.])], [["s", "t"], ["s", "u"]], 2).tolist()
    [False, False, False, False]
    """
    lengths = torch.tensor([r.numel() for r in step_rewards])
    totals = torch.stack([r.float().sum() for r in step_rewards]).view(-1, group_size)
    out = (totals.amax(dim=1) > totals.amin(dim=1)).repeat_interleave(group_size).repeat_interleave(lengths)
    if omega == 0:
        return out
    returns = torch.cat([discounted_returns(r, gamma) for r in step_rewards]).tolist()
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(anchor_keys(anchors, group_size)):
        members[key].append(i)
    for idx in members.values():
        if len({returns[i] for i in idx}) > 1:
            out[idx] = True
    return out

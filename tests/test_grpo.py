"""The GRPO maths (layerscout/grpo.py) against values computed by hand. Run: pytest tests/test_grpo.py"""

import pytest
import torch

from layerscout.errors import LayerscoutError
from layerscout.grpo import group_advantages, informative_groups, sequence_weights, surrogate_objective


def test_grpo_advantages_match_trl_formula():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    adv = group_advantages(r, 3, "grpo")
    # group 1: mean 1/3, unbiased std sqrt(1/3)
    std = (1 / 3) ** 0.5
    expected = torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (std + 1e-4)
    assert torch.allclose(adv[:3], expected)
    # group 2 (0, 1, 1): mean 2/3
    assert torch.allclose(adv[3:], torch.tensor([-2 / 3, 1 / 3, 1 / 3]) / (std + 1e-4))


def test_dr_grpo_advantages_do_not_divide_by_std_and_equal_rewards_give_zero():
    adv = group_advantages(torch.tensor([2.0, 0.0, 5.0, 5.0]), 2, "dr_grpo")
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]


def test_nan_reward_is_a_user_error():
    with pytest.raises(LayerscoutError, match="NaN"):
        group_advantages(torch.tensor([1.0, float("nan")]), 2)


def test_informative_groups_are_those_with_differing_rewards():
    assert informative_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0, 0.2]), 2) == [1, 3]


def test_sequence_weights_grpo_and_dr_grpo():
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]])
    assert torch.allclose(sequence_weights(adv, mask, "grpo", 8), torch.tensor([1 / (2 * 2), -1 / (3 * 2)]))
    assert torch.allclose(sequence_weights(adv, mask, "dr_grpo", 8), torch.tensor([1 / 16, -1 / 16]))
    # GiGPO normalises as GRPO (per-sequence token mean)
    assert torch.allclose(sequence_weights(adv, mask, "gigpo", 8), torch.tensor([1 / (2 * 2), -1 / (3 * 2)]))
    # Dr. GRPO has no length normalisation: equal |A| gives equal |c| whatever the lengths
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(sequence_weights(adv, mask, "dr_grpo", 4), torch.tensor([1 / 8, -1 / 8]))


def test_surrogate_at_old_policy_is_weighted_token_count_and_clip_caps_gains():
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    logps = torch.zeros(1, 3)
    assert float(surrogate_objective(logps, logps, mask, torch.tensor([0.5]))) == pytest.approx(1.0)
    up = torch.full((1, 3), 1.0)  # ratio e ≈ 2.718, clipped to 1.2 for a positive advantage
    assert float(surrogate_objective(up, logps, mask, torch.tensor([1.0]), clip_eps=0.2)) == pytest.approx(2.4)

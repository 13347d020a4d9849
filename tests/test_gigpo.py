"""GiGPO advantages against values computed by hand, with and without repeated states.
Run: pytest tests/test_gigpo.py   (under a second)"""

import pytest
import torch

from layerscout.gigpo import anchor_share, discounted_returns, gigpo_advantages, step_advantages
from layerscout.grpo import group_advantages

# One game, three episodes. States s0..s3; the success reward sits on the last step.
#   e0: s0 -> s1 -> s2, rewards 0 0 1 (won)
#   e1: s0 -> s3,       rewards 0 0   (lost)
#   e2: s0 -> s1,       rewards 0 1   (won)
REWARDS = [torch.tensor([0., 0., 1.]), torch.tensor([0., 0.]), torch.tensor([0., 1.])]
STATES = [["s0", "s1", "s2"], ["s0", "s3"], ["s0", "s1"]]


def test_discounted_returns():
    assert discounted_returns(torch.tensor([0., 0., 1.])).tolist() == pytest.approx([0.9025, 0.95, 1.0])
    assert discounted_returns(torch.tensor([1., 0., 2.]), 0.5).tolist() == pytest.approx([1.5, 1.0, 2.0])


def test_dr_grpo_normalisation_by_hand():
    """gamma = 0.5. Returns e0 [.25 .5 1], e1 [0 0], e2 [.5 1]. Episode totals [1 0 1], mean 2/3:
    A^E = [1/3, -2/3, 1/3]. Group s0 = {.25, 0, .5}, mean .25 -> [0, -.25, .25]; s1 = {.5 (e0), 1 (e2)},
    mean .75 -> [-.25, .25]; s2 and s3 are alone -> 0."""
    a = gigpo_advantages(REWARDS, STATES, group_size=3, loss_type="dr_grpo", gamma=0.5)
    expected = [1/3 + 0, 1/3 - .25, 1/3 + 0,
                -2/3 - .25, -2/3 + 0,
                1/3 + .25, 1/3 + .25]
    assert a.tolist() == pytest.approx(expected, abs=1e-6)


def test_grpo_normalisation_by_hand():
    """Same group, gamma = 0.95 and std division (unbiased std, + 1e-4 as TRL).
    A^E: totals [1 0 1], std = sqrt(((1/3)^2 + (2/3)^2 + (1/3)^2) / 2) = sqrt(1/3).
    s0 returns {.9025, 0, .95}: mean .6175, std = sqrt((.285^2 + .6175^2 + .3325^2) / 2).
    s1 returns {.95 (e0), 1 (e2)}: mean .975, std = sqrt(2 * .025^2) = .025 * sqrt(2) -> about -/+0.7051."""
    eps = 1e-4
    se = (1 / 3) ** 0.5
    ae = [(1 / 3) / (se + eps), (-2 / 3) / (se + eps), (1 / 3) / (se + eps)]
    s0 = ((.285 ** 2 + .6175 ** 2 + .3325 ** 2) / 2) ** 0.5
    s1 = .025 * 2 ** 0.5
    expected = [ae[0] + .285 / (s0 + eps), ae[0] - .025 / (s1 + eps), ae[0],
                ae[1] - .6175 / (s0 + eps), ae[1],
                ae[2] + .3325 / (s0 + eps), ae[2] + .025 / (s1 + eps)]
    a = gigpo_advantages(REWARDS, STATES, group_size=3)
    assert a.tolist() == pytest.approx(expected, abs=1e-5)
    assert a[1] == pytest.approx(ae[0] - 0.70511, abs=1e-4)  # by hand: .025 / (.0353553 + 1e-4)


def test_omega_weights_the_step_term():
    base = gigpo_advantages(REWARDS, STATES, group_size=3, loss_type="dr_grpo", gamma=0.5, omega=0.0)
    double = gigpo_advantages(REWARDS, STATES, group_size=3, loss_type="dr_grpo", gamma=0.5, omega=2.0)
    assert base.tolist() == pytest.approx([1/3] * 3 + [-2/3] * 2 + [1/3] * 2)
    assert double[3] == pytest.approx(-2/3 - 2 * .25)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_without_repeated_states_it_is_grpo_on_episodes(loss_type):
    states = [["a0", "a1", "a2"], ["b0", "b1"], ["c0", "c1"]]
    a = gigpo_advantages(REWARDS, states, group_size=3, loss_type=loss_type)
    per_episode = group_advantages(torch.tensor([1., 0., 1.]), 3, loss_type)
    assert torch.equal(a, per_episode.repeat_interleave(torch.tensor([3, 2, 2])))


def test_equal_states_of_different_games_are_not_grouped():
    """Two games of two episodes; every episode starts in state "s". Only same-game steps share a group."""
    rewards = [torch.tensor([1.]), torch.tensor([0.]), torch.tensor([0., 1.]), torch.tensor([0., 0.])]
    states = [["s"], ["s"], ["s", "t"], ["s", "u"]]
    a = gigpo_advantages(rewards, states, group_size=2, loss_type="dr_grpo", gamma=0.5)
    # game 0: A^E = [.5, -.5], s-group returns {1, 0} -> [.5, -.5]
    # game 1: A^E = [.5, -.5], s-group returns {.5, 0} -> [.25, -.25]; t and u alone
    assert a.tolist() == pytest.approx([1.0, -1.0, .75, .5, -.75, -.5])


def test_a_state_revisited_within_one_episode_joins_its_group():
    """A loop s -> s -> goal: both visits of s share the anchor group with the other episode's visit."""
    rewards = [torch.tensor([0., 0., 1.]), torch.tensor([0.])]
    states = [["s", "s", "g"], ["s"]]
    a = gigpo_advantages(rewards, states, group_size=2, loss_type="dr_grpo", gamma=0.5)
    # returns e0 [.25 .5 1], e1 [0]; s-group {.25, .5, 0}, mean .25 -> [0, .25, -.25]; A^E [.5, -.5]
    assert a.tolist() == pytest.approx([.5, .75, .5, -.75])


def test_anchor_share():
    assert anchor_share(STATES, 3) == pytest.approx(5 / 7)  # s0 x3 and s1 x2 of 7 steps
    assert anchor_share([["s"], ["s"]], 1) == 0.0  # two games, one episode each


def test_step_advantages_singletons_are_zero():
    assert step_advantages(torch.tensor([3., 1.]), ["x", "y"]).tolist() == [0.0, 0.0]


def test_shape_errors():
    with pytest.raises(ValueError, match="one anchor per step"):
        gigpo_advantages(REWARDS, [["s0"], ["s0", "s3"], ["s0", "s1"]], group_size=3)
    with pytest.raises(ValueError, match="do not split into groups"):
        gigpo_advantages(REWARDS, STATES, group_size=2)


def test_informative_steps_by_hand():
    """Where an advantage can be non-zero: REWARDS' totals differ, so every step of that game; a second game whose
    two episodes both win at the same turn has none, unless (omega != 0) an anchor group's returns differ."""
    from layerscout.gigpo import informative_steps

    assert informative_steps(REWARDS, STATES, 3).tolist() == [True] * 7
    same = [torch.tensor([0., 1.]), torch.tensor([0., 1.])]
    assert informative_steps(same, [["s", "t"], ["s", "t"]], 2).tolist() == [False] * 4
    # both win, one a turn later: totals equal, but the s-group returns .95 and .9025 differ
    late = [torch.tensor([0., 1.]), torch.tensor([0., 0., 1.])]
    assert informative_steps(late, [["s", "t"], ["s", "x", "t"]], 2).tolist() == [True, False, True, False, False]
    assert informative_steps(late, [["s", "t"], ["s", "x", "t"]], 2, omega=0.0).tolist() == [False] * 5
    a = gigpo_advantages(late, [["s", "t"], ["s", "x", "t"]], 2)
    assert (a != 0).tolist() == [True, False, True, False, False]

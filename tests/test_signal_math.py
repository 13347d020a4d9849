"""Pure maths of advantages, signals and ranking, checked against values computed by hand.
Run: pytest tests/test_signal_math.py"""

import numpy as np
import pytest
import torch

from layerscout.errors import LayerscoutError
from layerscout.ranking import combine_signals, ranks_from_scores
from layerscout.rollouts import group_advantages, sequence_weights, surrogate_objective, token_logps
from layerscout.signals.baselines import depth_prior, percentile_ranks, spectrum_snr
from layerscout.signals.gradients import gradient_snr, layer_sq_norms


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


def test_sequence_weights_grpo_and_dr_grpo():
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]])
    assert torch.allclose(sequence_weights(adv, mask, "grpo", 8), torch.tensor([1 / (2 * 2), -1 / (3 * 2)]))
    assert torch.allclose(sequence_weights(adv, mask, "dr_grpo", 8), torch.tensor([1 / 16, -1 / 16]))


def test_surrogate_at_old_policy_is_weighted_token_count_and_clip_caps_gains():
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    logps = torch.zeros(1, 3)
    assert float(surrogate_objective(logps, logps, mask, torch.tensor([0.5]))) == pytest.approx(1.0)
    up = torch.full((1, 3), 1.0)  # ratio e ≈ 2.718, clipped to 1.2 for a positive advantage
    assert float(surrogate_objective(up, logps, mask, torch.tensor([1.0]), clip_eps=0.2)) == pytest.approx(2.4)


def test_token_logps_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [1.0, 1.0]]]))
    out = token_logps(logits, torch.tensor([[0, 1, 0]]))
    assert torch.allclose(out, torch.tensor([[0.0, np.log(0.5), np.log(0.25)]], dtype=torch.float32))


def test_gradient_snr_known_cases():
    # 2 layers, 3 groups. layer 0: identical group gradients (no noise) -> inf;
    # layer 1: g_m = (1, 0), (-1, 0), (0, 0) -> mean 0 -> SNR 0.
    group_sq = np.array([[4.0, 1.0], [4.0, 1.0], [4.0, 0.0]])
    mean_sq = np.array([4.0, 0.0])
    snr = gradient_snr(group_sq, mean_sq)
    assert snr[0] == np.inf and snr[1] == 0.0
    # scalar gradients 1, 2, 3: mean 2, unbiased var 1 -> SNR 4
    assert gradient_snr(np.array([[1.0], [4.0], [9.0]]), np.array([4.0]))[0] == pytest.approx(4.0)


def test_layer_sq_norms_zero_and_missing_gradients():
    t = torch.tensor([3.0, 4.0])
    assert layer_sq_norms([[t, None], [None], [torch.zeros(3)]]).tolist() == [25.0, 0.0, 0.0]


def test_spectrum_snr_of_a_known_spectrum():
    # singular values 10, 1, 1, 1, 1 (orthogonal U, V): q75 = q25 = 1 -> σ = 0, edge 0: every value is
    # signal, noise = 0 -> inf. With 10, 4, 3, 2, 1: q75 = 4, q25 = 2, σ = 2/1.349, β = 1, edge = 2σ ≈ 2.965;
    # signal = 10 + 4 + 3 = 17, noise = 2 + 1 = 3, snr_ratio = (17 / 3) / 10.
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    w = u @ torch.diag(torch.tensor([10.0, 4, 3, 2, 1], dtype=torch.float64)) @ v.T
    assert spectrum_snr(w) == pytest.approx((17 / 3) / 10, rel=1e-6)
    w2 = u @ torch.diag(torch.tensor([10.0, 1, 1, 1, 1], dtype=torch.float64)) @ v.T
    assert spectrum_snr(w2) == np.inf


def test_depth_prior_and_percentiles():
    assert depth_prior(5).tolist() == [0.0, 0.5, 1.0, 0.5, 0.0]
    for n in (6, 12, 30):  # mirror blocks tie exactly (0.2 * 2 - 1 vs 0.8 * 2 - 1 did not), so rank ties are real
        prior = depth_prior(n)
        assert prior.tolist() == prior[::-1].tolist()
    assert percentile_ranks(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert percentile_ranks(np.array([7.0, 7.0])).tolist() == [0.5, 0.5]


def test_combine_and_rank():
    sig = {"a": np.array([1.0, 3.0, 2.0]), "b": np.array([3.0, 2.0, 1.0])}
    scores = combine_signals(sig, {"a": 3.0, "b": 1.0})
    # pct a = (0, 1, .5), b = (1, .5, 0); weighted (3a + b)/4 = (.25, .875, .375)
    assert np.allclose(scores, [0.25, 0.875, 0.375])
    assert ranks_from_scores(scores).tolist() == [3, 1, 2]
    assert ranks_from_scores(np.array([1.0, 1.0])).tolist() == [1, 2]  # tie -> shallower first
    with pytest.raises(LayerscoutError, match="not computed"):
        combine_signals(sig, {"c": 1.0})

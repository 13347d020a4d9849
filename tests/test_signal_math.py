"""Pure maths of signals and ranking, checked against values computed by hand.
Run: pytest tests/test_signal_math.py"""

import numpy as np
import pytest
import torch

from layerscout.errors import LayerscoutError
from layerscout.ranking import combine_signals, ranks_from_scores
from layerscout.signals.baselines import depth_prior, depth_residual, percentile_ranks, spectrum_snr
from layerscout.signals.gradients import block_sq_norms, gradient_snr, isotropic_natural_norm
from layerscout.signals.moments import diagonal_natural_norm, zico_score
from layerscout.signals.updates import adam_step


def test_gradient_snr_known_cases():
    # 2 layers, 3 groups. layer 0: identical group gradients (no noise) -> inf;
    # layer 1: g_m = (1, 0), (-1, 0), (0, 0) -> mean 0 -> SNR 0.
    group_sq = np.array([[4.0, 1.0], [4.0, 1.0], [4.0, 0.0]])
    mean_sq = np.array([4.0, 0.0])
    snr = gradient_snr(group_sq, mean_sq)
    assert snr[0] == np.inf and snr[1] == 0.0
    # scalar gradients 1, 2, 3: mean 2, unbiased var 1 -> SNR 4
    assert gradient_snr(np.array([[1.0], [4.0], [9.0]]), np.array([4.0]))[0] == pytest.approx(4.0)


def test_block_sq_norms_by_hand():
    blocks = [torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(1, 1)]
    values = dict(zip([*blocks[0].parameters(), *blocks[1].parameters()],
                      [torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0]]), torch.tensor([2.0])]))
    assert block_sq_norms(values, blocks).tolist() == [25.0, 4.0]


def test_adam_step_is_torch_adam():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, generator=g)
    grads = [torch.randn(5, generator=g) for _ in range(3)]
    ref = torch.nn.Parameter(w0.clone())
    opt = torch.optim.Adam([ref], lr=1e-3, foreach=False)
    w, m, v = w0.clone(), torch.zeros(5), torch.zeros(5)
    for step, grad in enumerate(grads, 1):
        ref.grad = grad.clone()
        opt.step()
        adam_step(w, grad, m, v, step, lr=1e-3)
    assert torch.equal(w, ref.detach())
    # the first step moves every entry by lr (sign of the gradient), whatever its size
    w1, m1, v1 = w0.clone(), torch.zeros(5), torch.zeros(5)
    adam_step(w1, grads[0], m1, v1, 1, lr=1e-3)
    torch.testing.assert_close(w0 - w1, 1e-3 * grads[0].sign(), rtol=1e-4, atol=0)


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


def test_passes_are_planned_from_the_signals_needs_in_registration_order():
    from layerscout.passes import plan_passes
    from layerscout.signals import get_signal

    assert plan_passes(get_signal("lookahead_gain").needs) == ["policy_grad", "lookahead"]
    needs = [n for s in ("spectral_snr", "update_norm", "grad_snr") for n in get_signal(s).needs]
    # grad_sweep covers policy_grad: one backward sweep serves update_norm and grad_snr
    assert plan_passes(needs) == ["grad_sweep", "update_steps", "depth", "spectrum"]
    with pytest.raises(LayerscoutError, match="unknown pass 'grad_swep'"):
        plan_passes(["grad_swep"])


def test_depth_residual_removes_a_log_linear_depth_trend_and_keeps_the_rest():
    d = np.linspace(0, 1, 5)
    np.testing.assert_allclose(depth_residual(np.exp(1.0 + 2.0 * d)), 0.0, atol=1e-12)
    # a bump on block 2 over the same trend: log values 1+2d plus (0, 0, 1, 0, 0); the line through them has
    # slope 2 and intercept 1.2 (the bump's mean 0.2 at d = 0.5, no slope), so residuals are -0.2 ... 0.8 ... -0.2
    bumped = np.exp(1.0 + 2.0 * d + np.array([0, 0, 1.0, 0, 0]))
    np.testing.assert_allclose(depth_residual(bumped), [-0.2, -0.2, 0.8, -0.2, -0.2], atol=1e-12)
    # a signal with zeros is residualised on its own scale
    np.testing.assert_allclose(depth_residual(np.array([0.0, 1.0, 2.0])), 0.0, atol=1e-12)


def test_isotropic_natural_norm_by_hand():
    # ||g||² = 4, d = 10, tr F = 2 -> gᵀ((trF/d) I)⁻¹ g = 4 * 10 / 2 = 20; zero Fisher -> 0
    out = isotropic_natural_norm(np.array([4.0, 1.0]), np.array([2.0, 0.0]), np.array([10.0, 3.0]))
    np.testing.assert_allclose(out, [20.0, 0.0])


def test_zico_and_diagonal_natural_norm_by_hand():
    # 3 parameters over M = 2 groups: g = (1, 3), (2, -2), (5, 5)
    g = torch.tensor([[1.0, 2.0, 5.0], [3.0, -2.0, 5.0]])
    s0, s1, s2 = g.sum(0), g.abs().sum(0), g.square().sum(0)
    # mean|g| / std(g): θ0 2 / 1, θ1 2 / 2, θ2 no spread (left out) -> log 3
    assert zico_score(s0, s1, s2, 2) == pytest.approx(np.log(3.0))
    # ḡ² / mean g²: θ0 4 / 5, θ1 0 / 4, θ2 25 / 25 -> 1.8
    assert diagonal_natural_norm(s0, s2, 2) == pytest.approx(1.8)
    zero = torch.zeros(3)
    assert zico_score(zero, zero, zero, 2) == float("-inf") and diagonal_natural_norm(zero, zero, 2) == 0.0


def test_depth_residualised_signals_are_registered_with_their_base_signal_needs():
    from layerscout.signals import DEPTH_RESIDUALISED, get_signal

    for name in DEPTH_RESIDUALISED:
        assert get_signal(f"{name}_depthres").needs == get_signal(name).needs
    trend = get_signal("grad_norm_depthres").fn
    sweep = type("S", (), {"pg_sq_norm": np.exp(2 * (1.0 + 2.0 * np.linspace(0, 1, 4)))})()
    np.testing.assert_allclose(trend(policy_grad=sweep), 0.0, atol=1e-12)

"""C(k) and rank metrics against values worked out by hand. Run: pytest tests/test_metrics.py   (< 2 s)"""

import math
import warnings

import numpy as np
import pytest

from layerscout.errors import LayerscoutError
from layerscout.metrics import (bootstrap_ci, gain_z, kendall, layer_contribution, ndcg, noise_ceiling,
                                paired_bootstrap_contribution, paired_gain, paired_z, prompt_split_agreement,
                                random_expectation, reward_rise, seed_spearman, spearman, spearman_brown,
                                top1_recovered, top1_regret, topk_overlap)


def test_reward_rise_by_hand():
    # thirds of 9 steps: first [0, .1, 0] mean 1/30, last [.3, .4, .3] mean 1/3; each var (ddof 1) 1/300,
    # Welch t = (1/3 - 1/30) / sqrt(2 * (1/300) / 3) = 0.3 / (sqrt(2) / 30) = 9 / sqrt(2), on 4 dof
    first, last, p = reward_rise([0, .1, 0, .2, .1, .2, .3, .4, .3])
    assert (first, last) == pytest.approx((1 / 30, 1 / 3))
    from scipy.stats import t
    assert p == pytest.approx(t.sf(9 / math.sqrt(2), 4))
    assert reward_rise([.3, .4, .3, .2, .1, .2, 0, .1, 0])[2] > 0.99   # a fall is no rise
    with pytest.raises(LayerscoutError, match=">= 6 steps"):
        reward_rise([0.1] * 5)


def test_paired_gain_by_hand():
    # d = [1, 0, 0, 0]: mean 0.25, std (ddof 1) = sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5, se = 0.5 / 2
    assert paired_gain([0, 0, 1, 1], [1, 0, 1, 1]) == pytest.approx((0.25, 0.25))
    # sampled rewards (means of 4 samples) work the same way
    assert paired_gain([0.25, 0.5, 0.0], [0.75, 0.5, 0.25])[0] == pytest.approx(0.25)
    with pytest.raises(LayerscoutError, match="equal-length"):
        paired_gain([0, 1], [0, 1, 1])


def test_paired_z_by_hand():
    assert paired_z([0, 0, 0, 1], [1, 1, 0, 1]) == pytest.approx(3 ** 0.5)  # d = 1,1,0,0: 0.5 / (0.577 / 2)
    assert paired_z([0, 1], [0, 1]) == 0.0                                  # nothing changed
    assert paired_z([0, 0], [1, 1]) == float("inf")                         # every prompt flipped alike


def test_gain_z_by_hand():
    assert gain_z(0.5, 0.25) == 2.0
    assert gain_z(0.0, 0.0) == 0.0               # nothing changed
    assert gain_z(-0.1, 0.0) == float("-inf")    # every prompt lost alike: as far below as it can be, not 0


def test_spearman_brown_and_noise_ceiling_by_hand():
    assert spearman_brown(0.5, 3) == pytest.approx(0.75)           # 1.5 / 2
    assert spearman_brown(0.8, 1) == pytest.approx(0.8)
    assert noise_ceiling(0.5, 3) == pytest.approx(0.75 ** 0.5)
    assert noise_ceiling(1.0, 2) == pytest.approx(1.0)
    assert math.isnan(noise_ceiling(-0.2, 3)) and math.isnan(noise_ceiling(float("nan"), 3))
    # seeds that disagree: the formula gives -5.55 at r = -0.74 and divides by zero at -1 (it printed -1.8e16)
    assert math.isnan(spearman_brown(-0.74, 2)) and math.isnan(spearman_brown(-1.0, 2))
    assert spearman_brown(0.0, 3) == 0.0


def test_prompt_split_agreement_by_hand():
    base, full = np.zeros((2, 4)), np.ones((2, 4))                       # every half gains 1
    profile = np.array([[1, 1, 1, 1], [.5, .5, .5, .5], [0, 0, 0, 0]])   # C = 1, 0.5, 0 on either half
    assert prompt_split_agreement(base, full, np.stack([profile, profile[::-1]])) == pytest.approx((1.0, -1.0))
    # blocks 0 and 1 each solve the other half's prompts: C on even prompts 1, 0, 0.5; on odd ones 0, 1, 0.5
    swapped = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [.5, .5, .5, .5]])
    within, across = prompt_split_agreement(base[:1], full[:1], swapped[None])
    assert within == pytest.approx(-1.0) and math.isnan(across)           # one seed: nothing across
    missing = np.stack([profile, profile[::-1]]).astype(float)
    missing[1, 2] = np.nan                                                # two shared blocks are too few
    assert all(math.isnan(v) for v in prompt_split_agreement(base, full, missing))


def test_seeds_can_agree_on_a_prompt_set_where_the_ranking_does_not_replicate():
    """llama-L12-drgrpo's case: each block flips its own random prompts up and down, the same ones in every seed,
    so its net gain is luck of which prompts it flips. Scored on one prompt set the seeds agree; on disjoint halves
    nothing replicates."""
    rng = np.random.default_rng(0)
    n, blocks = 400, 12
    base = (rng.random(n) < 0.3).astype(float)
    flips = rng.choice([-1.0, 0.0, 1.0], p=[0.1, 0.8, 0.1], size=(blocks, n))   # shared by the seeds
    seeds = [np.clip(base + flips + rng.choice([-1.0, 0.0, 1.0], p=[.01, .98, .01], size=(blocks, n)), 0, 1)
             for _ in range(2)]
    full = np.clip(base + (rng.random((2, n)) < 0.3), 0, 1)
    layers, bases = np.stack(seeds), np.stack([base, base])
    c = [(x.mean(axis=1) - base.mean()) / (f.mean() - base.mean()) for x, f in zip(layers, full)]
    assert seed_spearman(c) > 0.7                                            # the goal's bar
    within, across = prompt_split_agreement(bases, full, layers)
    assert abs(within) < 0.35 and abs(across) < 0.35
    # a real profile (block k raises the odds by k %) replicates on either half, in both seeds
    real = np.stack([np.clip(base + (rng.random((blocks, n)) < np.arange(blocks)[:, None] / 50), 0, 1)
                     for _ in range(2)])
    assert min(prompt_split_agreement(bases, full, real)) > 0.7


def test_top1_regret_by_hand():
    assert top1_regret([0.1, 0.9, 0.5], [0.2, 0.7, 1.1]) == pytest.approx(0.4)   # picks 1: 1.1 - 0.7
    assert top1_regret([3, 2, 1], [1.0, 0.5, 0.2]) == 0.0


def test_paired_bootstrap_contribution_brackets_the_estimate_and_shrinks_with_prompts():
    rng = np.random.default_rng(0)

    def draw(n):
        base = rng.binomial(1, 0.3, (2, n)).astype(float)
        full = np.maximum(base, rng.binomial(1, 0.4, (2, n)))          # every prompt the base solves, and more
        layer = np.stack([np.maximum(base, rng.binomial(1, p, (2, n))) for p in (0.1, 0.35)], axis=1)  # (2, 2, n)
        return base, full, layer

    base, full, layer = draw(400)
    point = np.mean([(layer[s].mean(axis=1) - base[s].mean()) / (full[s].mean() - base[s].mean()) for s in range(2)],
                    axis=0)
    low, high = paired_bootstrap_contribution(base, full, layer, n=300)
    assert np.all(low < point) and np.all(point < high)
    assert low[1] > high[0]                                           # the two blocks are told apart at n=400
    wide = np.subtract(*paired_bootstrap_contribution(*draw(50), n=300)[::-1])
    assert np.all(wide > high - low)


def test_paired_bootstrap_contribution_is_quiet_on_a_sweep_in_progress():
    """A block no seed has a run for yet (a sweep still running) gets a nan interval, with no warning printed."""
    rng = np.random.default_rng(0)
    base = rng.binomial(1, 0.3, (2, 60)).astype(float)
    full = np.maximum(base, rng.binomial(1, 0.5, (2, 60)))
    layer = np.full((2, 2, 60), np.nan)
    layer[0, 0] = np.maximum(base[0], rng.binomial(1, 0.3, 60))      # seed 0 has block 0; nobody has block 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = paired_bootstrap_contribution(base, full, layer, n=50)
    assert np.isfinite([low[0], high[0]]).all() and np.isnan([low[1], high[1]]).all()


def test_layer_contribution_three_entries():
    # (0.5-0.2)/0.4, (0.3-0.2)/0.4, (0.1-0.2)/0.4
    np.testing.assert_allclose(layer_contribution([0.5, 0.3, 0.1], 0.2, 0.6), [0.75, 0.25, -0.25])
    assert layer_contribution(0.6, 0.2, 0.6) == pytest.approx(1.0)


@pytest.mark.parametrize("s_full", [0.4, 0.4 + 1e-12, 0.3])
def test_layer_contribution_undefined_without_improvement(s_full):
    with pytest.raises(LayerscoutError, match=r"C is undefined: the full run did not improve over the base "
                                              r"\(S_full=0\.[34].*, S_base=0\.4\)"):
        layer_contribution([0.5], 0.4, s_full)


def test_spearman_and_kendall():
    # ranks of true: 1 2 4 3 -> d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8; one discordant pair of 6 -> tau = 4/6
    assert spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert kendall([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(4 / 6)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(kendall([1, 2, 3], [0, 0, 0]))
    assert math.isnan(spearman([], [])) and math.isnan(kendall([1], [2]))


def test_top1_recovered():
    # predicted best is layer 1 (C = 0.5); the true best is 2.0
    assert top1_recovered([0.1, 0.9, 0.5], [1.0, 0.5, 2.0]) == pytest.approx(0.25)
    assert top1_recovered([0.1, 0.2, 0.9], [1.0, 0.5, 2.0]) == 1.0
    assert math.isnan(top1_recovered([1, 2], [-0.1, -0.3]))
    # a tie in the prediction goes to the shallower layer
    assert top1_recovered([0.9, 0.9, 0.1], [0.5, 1.0, 0.2]) == pytest.approx(0.5)


def test_topk_overlap():
    # top-2 predicted {1, 2}; top-2 true {2, 0}
    assert topk_overlap([0.1, 0.9, 0.5, 0.3], [1.0, 0.5, 2.0, 0.1], k=2) == 0.5
    assert topk_overlap([3, 2, 1], [3, 2, 1], k=3) == 1.0
    with pytest.raises(LayerscoutError, match="k must be in 1..3"):
        topk_overlap([3, 2, 1], [3, 2, 1], k=4)


def test_ndcg_shifts_negative_contributions():
    # C = [-0.5, 0.5, 1.5] -> gains [0, 1, 2]; predicted order 0, 2, 1 -> gains 0, 2, 1
    dcg = 0 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 0 / math.log2(4)
    assert ndcg([3, 1, 2], [-0.5, 0.5, 1.5], k=3) == pytest.approx(dcg / idcg)
    assert ndcg([1, 2, 3], [-0.5, 0.5, 1.5], k=3) == pytest.approx(1.0)


def test_seed_spearman_mean_of_pairs():
    # pairs: 0.5, -1, -0.5 -> mean -1/3
    assert seed_spearman([[1, 2, 3], [1, 3, 2], [3, 2, 1]]) == pytest.approx(-1 / 3)
    assert math.isnan(seed_spearman([[1, 2, 3]])) and math.isnan(seed_spearman([[], []]))


def test_bootstrap_ci():
    true = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.2])
    assert bootstrap_ci(spearman, true, true, n=200, seed=0) == pytest.approx((1.0, 1.0))
    noisy = true + np.array([0.3, -0.2, 0.4, -0.3, 0.1, 0.0])
    low, high = bootstrap_ci(spearman, noisy, true, n=500, seed=1)
    assert -1 <= low < spearman(noisy, true) < high <= 1
    assert bootstrap_ci(spearman, noisy, true, n=500, seed=1) == (low, high)


def test_random_expectation_matches_analytic():
    true = np.array([0.9, 0.1, 0.5, 0.7])
    mean, low, high = random_expectation(lambda p, t: topk_overlap(p, t, 1), true, n=4000, seed=0)
    assert mean == pytest.approx(1 / 4, abs=0.03) and (low, high) == (0.0, 1.0)
    mean, low, high = random_expectation(spearman, true, n=4000, seed=0)
    assert mean == pytest.approx(0.0, abs=0.05) and low < 0 < high

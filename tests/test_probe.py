"""The RL probe on a real (small, SFT-trained) model: signal math against independent autograd, restoring the
model, determinism, and refusing to rank without signal. Run: pytest tests/test_probe.py"""

import numpy as np
import pytest
import torch

from layerscout.config import ProbeConfig
from layerscout.errors import LayerscoutError
from layerscout.models import decoder_layers
from layerscout.probe import ProbeState, run_probe, split_groups
from layerscout.rollouts import collect_rollouts, sequence_weights, token_logps

CFG = dict(num_prompts=6, num_generations=4, max_completion_length=8, update_steps=2)


def _state(model, tok, task, **kw):
    cfg = ProbeConfig(**{**CFG, **kw})
    torch.manual_seed(cfg.seed)
    ds = task.load_prompts("train", cfg.num_prompts, cfg.seed)
    ro = collect_rollouts(model, tok, task, ds, num_generations=cfg.num_generations,
                          max_completion_length=cfg.max_completion_length, loss_type=cfg.loss_type)
    for p in model.parameters():
        p.requires_grad_(False)
    for b in decoder_layers(model):
        b.requires_grad_(True)
    model.eval()
    return ProbeState(model, ro, cfg)


def _per_sample_grads(state, i):
    ro = state.rollouts
    keep = ro.attention_mask[i].bool()
    ids = ro.input_ids[i][keep][None]
    logp = (token_logps(state.model(input_ids=ids).logits, ids) * ro.completion_mask[i][keep][None]).sum()
    flat = [p for ps in state.block_params for p in ps]
    return torch.autograd.grad(logp, flat, allow_unused=True)


def test_gradient_signals_match_independent_autograd(organism, math_task):
    model, tok = organism
    state = _state(model, tok, math_task)
    ro, L = state.rollouts, state.n_layers
    sizes = [len(ps) for ps in state.block_params]
    fisher, pg = np.zeros(L), None
    for i in range(ro.input_ids.shape[0]):
        grads = _per_sample_grads(state, i)
        k0 = 0
        for k, n in enumerate(sizes):
            fisher[k] += sum(float((g ** 2).sum()) for g in grads[k0:k0 + n] if g is not None)
            k0 += n
        w = float(state.weights[i])
        contrib = [w * g if g is not None else None for g in grads]
        pg = contrib if pg is None else [a + b if b is not None else a for a, b in zip(pg, contrib)]
    stats = state.gradients
    assert np.allclose(stats.fisher, fisher / ro.input_ids.shape[0], rtol=1e-4)
    k0, pg_sq = 0, []
    for n in sizes:
        pg_sq.append(sum(float((g ** 2).sum()) for g in pg[k0:k0 + n] if g is not None))
        k0 += n
    assert np.allclose(stats.pg_sq_norm, pg_sq, rtol=1e-3)
    assert stats.pg_sq_norm.sum() > 0


def test_a_block_that_gets_no_gradient_scores_zero(organism, math_task):
    model, tok = organism
    block = decoder_layers(model)[1]
    # the block passes its input straight through: its weights no longer touch the output
    block.register_forward_hook(lambda mod, args, out: args[0] if torch.is_tensor(out) else (args[0], *out[1:]))
    state = _state(model, tok, math_task)
    g = state.gradients
    assert g.pg_sq_norm[1] == 0.0 and g.fisher[1] == 0.0
    assert (np.delete(g.pg_sq_norm, 1) > 0).all()
    from layerscout.signals import get_signal
    assert get_signal("grad_snr").fn(state)[1] == 0.0


def test_probe_ranks_every_block_and_restores_the_model(organism, math_task):
    model, tok = organism
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ranking = run_probe(model, tok, math_task, ProbeConfig(**CFG), progress=False)
    L = len(decoder_layers(model))
    assert sorted(s.rank for s in ranking.layers) == list(range(1, L + 1))
    assert 0 <= ranking.top_layer < L
    for s in ranking.layers:
        assert set(s.signals) == set(ProbeConfig().signals)
        assert all(np.isfinite(v) or name == "grad_snr" for name, v in s.signals.items())
    d = ranking.to_dict()
    assert d["cost"]["generated_tokens"] > 0 and d["cost"]["forward_backward_passes"] > 0
    assert d["rollouts"]["informative_groups"] >= 2
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def test_same_seed_same_ranking(organism_path, math_task):
    from layerscout.models import load_model

    runs = [run_probe(*load_model(str(organism_path)), math_task, ProbeConfig(**CFG), progress=False)
            for _ in range(2)]
    assert [s.signals for s in runs[0].layers] == [s.signals for s in runs[1].layers]
    assert [s.rank for s in runs[0].layers] == [s.rank for s in runs[1].layers]


def test_identical_rewards_refuse_to_rank(organism, math_task, monkeypatch):
    model, tok = organism
    monkeypatch.setattr(math_task, "reward", lambda completions, **kw: [0.0] * len(completions))
    with pytest.raises(LayerscoutError, match="no signal: every one of the 6 prompt groups got identical rewards"):
        run_probe(model, tok, math_task, ProbeConfig(**CFG), progress=False)


def test_few_informative_groups_warn(organism, math_task, monkeypatch):
    """Only the first completion of the whole batch is rewarded: one group of six carries the signal."""
    model, tok = organism
    monkeypatch.setattr(math_task, "reward", lambda completions, **kw: [1.0] + [0.0] * (len(completions) - 1))
    with pytest.warns(UserWarning, match="only 1 of 6 prompt groups got differing rewards"):
        run_probe(model, tok, math_task, ProbeConfig(**{**CFG, "signals": ["grad_norm"],
                                                         "score_weights": {"grad_norm": 1.0}}), progress=False)


def test_nan_gradients_are_reported(organism, math_task):
    model, tok = organism
    state = _state(model, tok, math_task)
    with torch.no_grad():
        next(decoder_layers(model)[0].parameters()).fill_(float("nan"))
    with pytest.raises(LayerscoutError, match="NaN/inf gradients"):
        state.gradients


def test_split_spreads_informative_groups(organism, math_task):
    model, tok = organism
    state = _state(model, tok, math_task)
    probe, held = split_groups(state.rollouts, 0.5, seed=0)
    assert sorted(probe + held) == list(range(state.rollouts.num_groups))
    assert not set(probe) & set(held)


def test_dr_grpo_weights_have_no_length_normalisation():
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(sequence_weights(adv, mask, "dr_grpo", 4), torch.tensor([1 / 8, -1 / 8]))


def test_probe_config_checks():
    with pytest.raises(LayerscoutError, match="at least 2 generations per prompt; got 1"):
        ProbeConfig(num_generations=1)
    with pytest.raises(LayerscoutError, match="loss_type"):
        ProbeConfig(loss_type="ppo")


def test_overrides_parse_numbers_but_keep_quoted_strings():
    from layerscout.config import parse_override

    assert parse_override("rl.learning_rate=3e-5") == ("rl.learning_rate", 3e-5)   # YAML 1.1 reads it as a string
    assert parse_override("layers='0'") == ("layers", "0")                         # quoted: stays a string
    assert parse_override('layers="::3"') == ("layers", "::3") and parse_override("n=32") == ("n", 32)

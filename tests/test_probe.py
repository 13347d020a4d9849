"""The RL probe on a real (small, SFT-trained) model: signal math against independent autograd, restoring the
model, determinism, and refusing to rank without signal. Run: pytest tests/test_probe.py"""

import numpy as np
import pytest
import torch

from layerscout.config import ProbeConfig
from layerscout.errors import LayerscoutError
from layerscout.grpo import sequence_weights
from layerscout.logprobs import completion_logps, fused_head
from layerscout.models import decoder_layers
from layerscout.passes import PassContext
from layerscout.precision import Precision
from layerscout.probe import _probe_mode, run_probe, split_groups
from layerscout.rollouts import collect_rollouts
from layerscout.signals import ALL_SIGNALS, get_signal
from layerscout.signals.gradients import gradient_sweep, policy_gradient
from layerscout.signals.moments import diagonal_natural_norm, group_moments, zico_score

CFG = dict(num_prompts=6, num_generations=4, max_completion_length=8, update_steps=2)


def _rollouts(model, tok, task, **kw):
    cfg = ProbeConfig(**{**CFG, **kw})
    torch.manual_seed(cfg.seed)
    ds = task.load_prompts("train", cfg.num_prompts, cfg.seed)
    ro = collect_rollouts(model, tok, task, ds, num_generations=cfg.num_generations,
                          max_completion_length=cfg.max_completion_length, loss_type=cfg.loss_type)
    return cfg, ro


def _sweep(model, cfg, ro):
    """The gradient pass in fp32 compute (also on CUDA, where the default policy would autocast to bf16)."""
    with _probe_mode(model), fused_head(model, cfg.temperature):
        ctx = PassContext(model, ro, cfg, Precision(device_type=model.device.type), *split_groups(ro, 0.5, 0))
        return gradient_sweep(ctx), ctx


def _per_sequence_grads(model, ro, i, temperature=1.0):
    """∇ of sequence i's completion log-likelihood, run alone and unpadded, with plain autograd."""
    keep = ro.attention_mask[i].bool()
    ids = ro.input_ids[i][keep][None]
    logits = model(input_ids=ids).logits[:, :-1] / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    flat = [p for b in decoder_layers(model) for p in b.parameters()]
    return torch.autograd.grad((logp * ro.completion_mask[i][keep][None, 1:]).sum(), flat, allow_unused=True)


def _unequal_groups(ro, sizes):
    """The same rows regrouped into consecutive groups of `sizes` rows, as multi-turn rollouts are (one group per
    game, one row per step)."""
    from dataclasses import fields

    from layerscout.multiturn import StepRollouts

    assert sum(sizes) == ro.input_ids.shape[0]
    group = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    return StepRollouts(**{**{f.name: getattr(ro, f.name) for f in fields(ro)}, "group": group},
                        informative=ro.advantages != 0)


@pytest.mark.parametrize("sizes", [None, (5, 3, 7, 2, 4, 3)], ids=["equal-groups", "unequal-groups"])
def test_gradient_signals_match_independent_autograd(organism, math_task, sizes):
    model, tok = organism
    cfg, ro = _rollouts(model, tok, math_task)
    if sizes is not None:
        ro = _unequal_groups(ro, sizes)
    stats, ctx = _sweep(model, cfg, ro)
    sizes = [len(list(b.parameters())) for b in ctx.blocks]
    fisher, pg, group_sq = np.zeros(ctx.n_layers), None, np.zeros((ro.num_groups, ctx.n_layers))
    group_grads = []  # per group: M × its share of ∇J, per block parameter
    flat = [p for b in ctx.blocks for p in b.parameters()]
    weights = sequence_weights(ro.advantages, ro.completion_mask, "grpo", cfg.max_completion_length)

    def per_block(grads):
        out, k0 = [], 0
        for n in sizes:
            out.append(sum(float((g.double() ** 2).sum()) for g in grads[k0:k0 + n] if g is not None))
            k0 += n
        return np.array(out)

    for m in range(ro.num_groups):
        group = None
        for i in torch.nonzero(ro.group == m).flatten().tolist():
            grads = _per_sequence_grads(model, ro, i)
            fisher += per_block(grads)
            contrib = [float(weights[i]) * g if g is not None else None for g in grads]
            group = contrib if group is None else [a + b if b is not None else a for a, b in zip(group, contrib)]
        group_sq[m] = per_block([g * ro.num_groups for g in group])
        group_grads.append([g * ro.num_groups if g is not None else None for g in group])
        pg = group if pg is None else [a + b for a, b in zip(pg, group)]
    np.testing.assert_allclose(stats.fisher, fisher / ro.input_ids.shape[0], rtol=1e-4)
    np.testing.assert_allclose(stats.pg_sq_norm, per_block(pg), rtol=1e-4)
    np.testing.assert_allclose(stats.group_sq_norms, group_sq, rtol=1e-4, atol=1e-12)
    assert stats.pg_sq_norm.sum() > 0
    for p, g in zip([p for b in ctx.blocks for p in b.parameters()], pg):
        torch.testing.assert_close(stats.total[p], g, rtol=1e-4, atol=1e-7)
    taylor = per_block_abs([(p.detach() * g).abs() for p, g in zip([p for b in ctx.blocks for p in b.parameters()], pg)],
                           sizes)
    np.testing.assert_allclose(stats.taylor, taylor, rtol=1e-4)
    # the plain-autograd policy_grad pass gives the same ∇J, reductions and probe sign
    with _probe_mode(model), fused_head(model, cfg.temperature):
        plain = policy_gradient(ctx)
    np.testing.assert_allclose(plain.pg_sq_norm, stats.pg_sq_norm, rtol=1e-4)
    np.testing.assert_allclose(plain.taylor, stats.taylor, rtol=1e-4)
    assert plain.fisher is None and plain.group_sq_norms is None
    for p, g in stats.total.items():
        torch.testing.assert_close(plain.total[p], g, rtol=1e-4, atol=1e-7)
    same = sum(int((plain.probe_sign[p] == s).sum()) for p, s in stats.probe_sign.items())
    assert same >= 0.999 * sum(s.numel() for s in stats.probe_sign.values())  # only rounding-level entries differ
    # the group_moments pass (its own autograd, several groups per micro-batch) against the same group gradients
    with _probe_mode(model), fused_head(model, cfg.temperature):
        moments = group_moments(ctx)
    zico, natural, k0 = [], [], 0
    for n in sizes:
        per_group = [torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in
                                zip(gs[k0:k0 + n], flat[k0:k0 + n])]) for gs in group_grads]
        stack = torch.stack(per_group)
        s0, s1, s2 = stack.sum(0), stack.abs().sum(0), stack.square().sum(0)
        zico.append(zico_score(s0, s1, s2, ro.num_groups))
        natural.append(diagonal_natural_norm(s0, s2, ro.num_groups))
        k0 += n
    np.testing.assert_allclose(moments.zico, zico, rtol=1e-4)
    np.testing.assert_allclose(moments.natural_diag, natural, rtol=1e-3)
    assert np.isfinite(moments.zico).all() and (moments.natural_diag > 0).all()


def per_block_abs(values, sizes):
    out, k0 = [], 0
    for n in sizes:
        out.append(sum(float(v.double().sum()) for v in values[k0:k0 + n]))
        k0 += n
    return np.array(out)


def test_own_attribution_is_gradient_times_the_blocks_own_write(organism, math_task):
    """Independent: each sequence alone, unpadded; transformers' hidden_states[k] is block k's input (and block
    k-1's output), so Σ |(h_{k+1} - h_k) · ∂F/∂h_{k+1}| for every block but the last (whose output is normed)."""
    from layerscout.signals.attribution import own_attribution_pass

    model, tok = organism
    cfg, ro = _rollouts(model, tok, math_task)
    with _probe_mode(model), fused_head(model, cfg.temperature):
        ctx = PassContext(model, ro, cfg, Precision(device_type=model.device.type), *split_groups(ro, 0.5, 0))
        own = own_attribution_pass(ctx)
    n = ro.input_ids.shape[0]
    weights = sequence_weights(ro.advantages, ro.completion_mask, "grpo", cfg.max_completion_length) * n
    expected = np.zeros(ctx.n_layers)
    for i in range(n):
        keep = ro.attention_mask[i].bool()
        ids = ro.input_ids[i][keep][None]
        out = model(input_ids=ids, output_hidden_states=True)
        hs = out.hidden_states
        logp = torch.log_softmax(out.logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        objective = float(weights[i]) * (logp * ro.completion_mask[i][keep][None, 1:]).sum()
        grads = torch.autograd.grad(objective, hs[1:-1])
        for k, g in enumerate(grads):
            expected[k] += float(((hs[k + 1] - hs[k]).detach().double() * g.double()).abs().sum())
    np.testing.assert_allclose(own[:-1], expected[:-1] / n, rtol=1e-3)
    assert own[-1] > 0


def test_gradient_checkpointing_gives_the_same_signals(organism, math_task, monkeypatch):
    import torch.utils.checkpoint

    model, tok = organism
    cfg, ro = _rollouts(model, tok, math_task)
    names = ("grad_norm", "fisher_trace", "grad_snr", "update_norm", "attribution")
    fp32 = Precision(device_type=model.device.type)
    plain = signals_under(model, ro, cfg, fp32, names)
    modes, checkpoint = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint",
                        lambda *a, **kw: modes.append(kw["use_reentrant"]) or checkpoint(*a, **kw))
    cfg.gradient_checkpointing = True
    ckpt = signals_under(model, ro, cfg, fp32, names)
    assert set(modes) == {True, False}  # reentrant for the hooked sweeps, not for captum
    for name in names:
        np.testing.assert_allclose(ckpt[name], plain[name], rtol=1e-5, err_msg=name)


def test_checkpointing_is_on_by_default_from_50m_parameters():
    from layerscout.config import CHECKPOINT_FROM_PARAMS

    assert not ProbeConfig().checkpointing_for(1_600_000)  # the organisms: recompute would only cost time
    assert ProbeConfig().checkpointing_for(CHECKPOINT_FROM_PARAMS) and ProbeConfig().checkpointing_for(135_000_000)
    assert not ProbeConfig(gradient_checkpointing=False).checkpointing_for(8_000_000_000)
    assert ProbeConfig(gradient_checkpointing=True).checkpointing_for(1_000)


def test_a_token_budget_splits_the_passes_and_keeps_the_signals(organism, math_task, monkeypatch):
    """batch_tokens caps each forward/backward at whole prompt groups within the budget (a group over it gets a pass
    of its own); the signals equal those of one pass per 8 sequences."""
    model, tok = organism
    cfg, ro = _rollouts(model, tok, math_task)
    names = ("grad_norm", "fisher_trace", "grad_snr", "update_norm", "lookahead_gain")
    fp32 = Precision(device_type=model.device.type)
    cfg.batch_tokens = None
    plain = signals_under(model, ro, cfg, fp32, names)
    length = ro.input_ids.shape[1]
    cfg.batch_tokens = 2 * length + 1  # two sequences: less than one group of 4
    shapes = []
    monkeypatch.setattr(PassContext, "logps", lambda self, r, rows, precision=None, _own=PassContext.logps:
                        shapes.append(r.input_ids[rows].shape) or _own(self, r, rows, precision))
    budget = signals_under(model, ro, cfg, fp32, names)
    assert {s[0] for s in shapes} == {2, 4}  # update steps: 2 rows a pass; the sweep: one group of 4 a pass
    for name in names:
        np.testing.assert_allclose(budget[name], plain[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", ["grad_sweep", "policy_grad"])
def test_the_gradient_passes_keep_the_sign_copy_only_for_the_lookahead(organism, math_task, name):
    from layerscout.passes import PASSES

    model, tok = organism
    cfg, ro = _rollouts(model, tok, math_task)
    with _probe_mode(model), fused_head(model, cfg.temperature):
        ctx = PassContext(model, ro, cfg, Precision(device_type=model.device.type), *split_groups(ro, 0.5, 0))
        ctx.planned = [name]
        alone = PASSES[name].fn(ctx)
        ctx.planned = [name, "lookahead"]
        both = PASSES[name].fn(ctx)
    assert alone.probe_sign is None and len(both.probe_sign) == len(both.total)
    np.testing.assert_array_equal(alone.pg_sq_norm, both.pg_sq_norm)


def test_completion_logps_apply_the_temperature_and_skip_the_prompt(organism, math_task):
    model, tok = organism
    cfg, ro = _rollouts(model, tok, math_task)
    with torch.no_grad(), fused_head(model, 0.7):
        got = completion_logps(model, ro.input_ids[:3], ro.attention_mask[:3], ro.completion_mask[:3])
    logits = model(input_ids=ro.input_ids[:3], attention_mask=ro.attention_mask[:3]).logits[:, :-1] / 0.7
    ref = torch.log_softmax(logits, -1).gather(-1, ro.input_ids[:3, 1:, None]).squeeze(-1)
    ref = torch.nn.functional.pad(ref, (1, 0)) * ro.completion_mask[:3]
    torch.testing.assert_close(got, ref.detach(), rtol=1e-5, atol=1e-5)
    assert "forward" not in vars(model)  # the fused head is gone again


def test_a_block_that_gets_no_gradient_scores_zero(organism, math_task):
    model, tok = organism
    block = decoder_layers(model)[1]
    # the block passes its input straight through: its weights no longer touch the output
    block.register_forward_hook(lambda mod, args, out: args[0] if torch.is_tensor(out) else (args[0], *out[1:]))
    cfg, ro = _rollouts(model, tok, math_task)
    g, _ = _sweep(model, cfg, ro)
    assert g.pg_sq_norm[1] == 0.0 and g.fisher[1] == 0.0
    assert (np.delete(g.pg_sq_norm, 1) > 0).all()
    assert get_signal("grad_snr").fn(grad_sweep=g)[1] == 0.0


def test_probe_ranks_every_block_and_restores_the_model(organism, math_task):
    model, tok = organism
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ranking = run_probe(model, tok, math_task, ProbeConfig(**CFG, signals=["all"]), progress=False)
    L = len(decoder_layers(model))
    assert sorted(s.rank for s in ranking.layers) == list(range(1, L + 1))
    assert 0 <= ranking.top_layer < L
    for s in ranking.layers:
        assert set(s.signals) == set(ALL_SIGNALS)
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
    """Only the first completion of the whole batch is rewarded: one group of six carries the signal (dynamic
    sampling off: it would draw more prompts)."""
    model, tok = organism
    monkeypatch.setattr(math_task, "reward", lambda completions, **kw: [1.0] + [0.0] * (len(completions) - 1))
    with pytest.warns(UserWarning, match="only 1 of 6 prompt groups got differing rewards"):
        run_probe(model, tok, math_task, ProbeConfig(**{**CFG, "signals": ["grad_norm"], "dynamic_sampling": False,
                                                         "score_weights": {"grad_norm": 1.0}, "predictor": None}),
                  progress=False)


def test_nan_gradients_are_reported(organism, math_task):
    model, tok = organism
    cfg, ro = _rollouts(model, tok, math_task)
    with torch.no_grad():
        next(decoder_layers(model)[0].parameters()).fill_(float("nan"))
    with pytest.raises(LayerscoutError, match="NaN/inf gradients"):
        _sweep(model, cfg, ro)


def test_split_spreads_informative_groups(organism, math_task):
    model, tok = organism
    _, ro = _rollouts(model, tok, math_task)
    probe, held = split_groups(ro, 0.5, seed=0)
    assert sorted(probe + held) == list(range(ro.num_groups))
    assert not set(probe) & set(held)


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


def test_yaml_configs_read_exponent_floats(tmp_path):
    """`learning_rate: 3e-4` in a sweep YAML is a float, as in the overrides (PyYAML alone gives the string '3e-4',
    which the config then refused)."""
    from layerscout.calibrate import CalibrationConfig
    from layerscout.config import from_dict, load_yaml

    path = tmp_path / "sweep.yaml"
    path.write_text("rl: {learning_rate: 3e-4, max_grad_norm: -1.5E+0}\nseeds: [0]\nlayers: '1'\n")
    data = load_yaml(path)
    assert data["rl"] == {"learning_rate": 3e-4, "max_grad_norm": -1.5} and data["layers"] == "1"
    with pytest.raises(LayerscoutError, match="max_grad_norm"):   # the value arrives as a number and is checked
        from_dict(CalibrationConfig, data)


def test_lookahead_gain_is_the_heldout_gain_of_a_step_on_that_block_alone(organism, math_task):
    """Each block's gain against full forwards with only that block stepped (the replay must not carry block 0's
    step into later blocks, as the recorded outputs did before)."""
    from layerscout.precision import FP32
    from layerscout.signals.updates import _heldout_objective, lookahead

    model, tok = organism
    cfg, ro = _rollouts(model, tok, math_task, lookahead_lr=1e-3)
    sweep, ctx = _sweep(model, cfg, ro)
    with _probe_mode(model), fused_head(model, 1.0), torch.no_grad():
        got = lookahead(ctx, sweep)
        before = float(sum(_heldout_objective(ctx, sl, FP32) for sl in ctx.batches(ctx.heldout)))
        for k, block in enumerate(ctx.blocks):
            saved = [p.clone() for p in block.parameters()]
            for p in block.parameters():
                p.add_(sweep.probe_sign[p].float(), alpha=cfg.lookahead_lr)
            want = float(sum(_heldout_objective(ctx, sl, FP32) for sl in ctx.batches(ctx.heldout))) - before
            for p, s in zip(block.parameters(), saved):
                p.copy_(s)
            assert got[k] == pytest.approx(want, rel=1e-4, abs=1e-9), k
    assert np.ptp(got) > 0


def signals_under(model, ro, cfg, precision, names=("update_norm", "lookahead_gain")):
    """Per-block signals of `model` (already in `precision.weights`) on rollouts `ro`, old log-probs recorded anew
    under `precision`, as a run with that policy would."""
    import dataclasses

    from layerscout.memory import MemoryMeter
    from layerscout.passes import plan_passes, run_passes
    from layerscout.rollouts import sequence_logps

    ro = dataclasses.replace(ro, old_logps=sequence_logps(model, ro.input_ids, ro.attention_mask, ro.completion_mask,
                                                          precision=precision))
    sigs = [get_signal(n) for n in names]
    with _probe_mode(model), fused_head(model, cfg.temperature):
        ctx = PassContext(model, ro, cfg, precision, *split_groups(ro, cfg.lookahead_fraction, cfg.seed))
        res = run_passes(ctx, plan_passes([n for s in sigs for n in s.needs]), MemoryMeter(ctx.device))
    return {s.name: np.asarray(s.fn(**{n: res[n] for n in s.needs})) for s in sigs}


def test_bf16_signals_agree_with_fp32(organism, math_task):
    """The precision policy: Adam steps on fp32 master copies, lookahead forwards in fp32. Pure bf16 (before the
    policy) gave lookahead Spearman -0.29..0.52 and update_norm values 57 % off (README, benchmarks/precision.py)."""
    import copy

    from scipy.stats import spearmanr

    model, tok = organism
    cfg, ro = _rollouts(model, tok, math_task, num_prompts=8, max_completion_length=16)
    fp32 = signals_under(model, ro, cfg, Precision())
    bf16 = signals_under(copy.deepcopy(model).to(torch.bfloat16), ro, cfg, Precision("bfloat16", "bfloat16"))
    for name, ref in fp32.items():
        assert spearmanr(ref, bf16[name]).statistic >= 0.9, name
    np.testing.assert_allclose(bf16["update_norm"], fp32["update_norm"], rtol=0.01)


def test_gradient_passes_hold_no_autocast_cache_of_the_block_weights(organism, math_task):
    """Under autocast, torch caches a bf16 copy of every weight that requires grad until the context exits: N_b·2
    bytes through policy_grad's forward (7 GiB on Qwen3-4B's shape, measured on an H200). The passes turn the cache
    off; each weight is cast once per forward anyway, so the signals are bit-identical."""
    model, tok = organism
    cfg, ro = _rollouts(model, tok, math_task, num_prompts=4, max_completion_length=8)
    seen = []
    hook = decoder_layers(model)[0].register_forward_pre_hook(
        lambda module, args: seen.append((torch.is_autocast_enabled("cpu"), torch.is_autocast_cache_enabled())))
    try:
        with _probe_mode(model), fused_head(model, cfg.temperature):
            ctx = PassContext(model, ro, cfg, Precision("float32", "bfloat16", device_type="cpu"),
                              *split_groups(ro, 0.5, 0))
            grads = policy_gradient(ctx)
            group_moments(ctx)
    finally:
        hook.remove()
    assert len(seen) >= 2 and all(on and not cached for on, cached in seen), seen
    assert np.isfinite(grads.pg_sq_norm).all() and grads.pg_sq_norm.sum() > 0


def test_by_default_the_probe_computes_only_what_the_predictor_scores_with(organism, math_task):
    from layerscout.predictor import load_predictor

    model, tok = organism
    d = run_probe(model, tok, math_task, ProbeConfig(**CFG), progress=False).to_dict()
    assert set(d["layers"][0]["signals"]) == set(load_predictor("default").signals)
    assert list(d["cost"]["peak_memory_mib"]) == ["rollouts", "policy_grad", "signals"]  # no update, lookahead, ...
    assert d["cost"]["forward_passes"] == 0  # no pass reads old log-probs: none recorded
    assert ProbeConfig(predictor=None).signal_names() == ["attribution"]  # the score_weights rule's input


def test_only_the_needed_passes_run_and_each_phase_records_its_peak(organism, math_task):
    model, tok = organism
    cfg = ProbeConfig(**{**CFG, "signals": ["grad_norm", "lookahead_gain"], "score_weights": {"grad_norm": 1.0}, "predictor": None})
    cost = run_probe(model, tok, math_task, cfg, progress=False).cost
    assert list(cost["peak_memory_mib"]) == ["rollouts", "policy_grad", "lookahead", "signals"]
    assert all(v > 0 for v in cost["peak_memory_mib"].values())
    # each signal's cost: the passes it needs, in the probe's units (a backward over every rollout token = 1)
    assert cost["passes"]["policy_grad"]["forward_backward_passes"] == pytest.approx(1.0)
    assert cost["passes"]["lookahead"]["forward_backward_passes"] == 0 < cost["passes"]["lookahead"]["forward_passes"]
    assert cost["signals"]["grad_norm"]["passes"] == ["policy_grad"]
    assert cost["signals"]["lookahead_gain"]["passes"] == ["policy_grad", "lookahead"]
    assert cost["signals"]["lookahead_gain"]["forward_passes"] == cost["passes"]["lookahead"]["forward_passes"]
    cfg = ProbeConfig(**{**CFG, "signals": ["grad_norm", "fisher_trace"], "predictor": None,
                         "score_weights": {"grad_norm": 1.0}})
    cost = run_probe(model, tok, math_task, cfg, progress=False).cost
    assert cost["signals"]["grad_norm"]["passes"] == ["grad_sweep"]  # policy_grad was covered by the grad sweep


def test_a_pass_result_drops_its_tensors_once_no_later_pass_needs_them(organism, math_task):
    from layerscout.memory import MemoryMeter
    from layerscout.passes import run_passes

    model, tok = organism
    cfg, ro = _rollouts(model, tok, math_task)
    with _probe_mode(model), fused_head(model, 1.0):
        ctx = PassContext(model, ro, cfg, Precision(), *split_groups(ro, 0.5, 0))
        results = run_passes(ctx, ["grad_sweep", "lookahead"], MemoryMeter(ctx.device))
    sweep = results["grad_sweep"]  # the lookahead used its probe sign, then both tensors were dropped
    assert sweep.total is None and sweep.probe_sign is None and sweep.pg_sq_norm.shape == (ctx.n_layers,)
    assert np.ptp(results["lookahead"]) > 0

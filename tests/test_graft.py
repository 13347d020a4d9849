"""Delta grafting: the SNIS estimate by hand, exact zero-Δ grafts on a real model, `rank --from-run` on a real
`train --full` result, refusal of another model's run, and the probe pass. Run: pytest tests/test_graft.py"""

import copy
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from layerscout.cli import cli
from layerscout.config import ProbeConfig
from layerscout.graft import graft_blocks, heldout_rollouts, snis_reward
from layerscout.models import decoder_layers
from layerscout.probe import run_probe

FAST = dict(num_prompts=4, num_generations=4, max_completion_length=8, graft_prompts=6, graft_steps=1, seed=0)


def test_snis_by_hand():
    # group 1: w = (1, 3) -> (1·1 + 3·0) / 4 = 0.25; group 2: equal weights -> plain mean 0.5
    assert snis_reward([0.0, math.log(3), math.log(2), math.log(2)], [1, 0, 1, 0], 2) == pytest.approx(0.375)
    # a shift of one group's log-weights cancels; zero log-weights give the plain mean
    assert snis_reward([5.0, 5 + math.log(3), -7.0, -7.0], [1, 0, 1, 0], 2) == pytest.approx(0.375)
    assert snis_reward(np.zeros(6), [1, 0, 0, 1, 1, 1], 3) == pytest.approx((1 / 3 + 1) / 2)
    # a dominant weight picks its sample's reward
    assert snis_reward([0.0, 800.0], [0.2, 0.9], 2) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="multiple of 4"):
        snis_reward(np.zeros(6), np.zeros(6), 4)


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_a_zero_delta_graft_scores_exactly_the_base(organism, math_task):
    model, tok = organism
    rollouts = heldout_rollouts(model, tok, math_task, ProbeConfig(**FAST))
    run = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in decoder_layers(run)[2].parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    before, before_run = _state(model), _state(run)
    result = graft_blocks(model, run, rollouts, batch_size=8)
    others = [k for k in range(6) if k != 2]
    assert result.base_score == pytest.approx(float(rollouts.rewards.double().mean()), abs=1e-12)
    assert (result.graft_gain[others] == 0).all() and (result.knockout_loss[others] == 0).all()
    # the run differs from the base in block 2 only: grafting it gives the run, knocking it out gives the base
    assert result.graft_gain[2] != 0
    assert result.graft_gain[2] == result.knockout_loss[2] == result.run_score - result.base_score
    for state, m in ((before, model), (before_run, run)):
        assert all(torch.equal(state[n], p) for n, p in m.named_parameters())


@pytest.fixture(scope="module")
def full_run(organism_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--full", "--steps", "2", "--quiet", "--json",
                                 "-o", "eval_prompts=4", "-o", "prompts_per_step=2", "-o", "max_completion_length=8",
                                 "-o", "learning_rate=3e-4", "--output", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_rank_from_run_ranks_by_grafting(organism_path, full_run, tmp_path):
    out = tmp_path / "ranking.json"
    r = CliRunner().invoke(cli, ["rank", str(organism_path), "--from-run", str(full_run), "--json", "--quiet",
                                 "-o", "graft_prompts=6", "-o", "max_completion_length=8", "--output", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data == json.loads(out.read_text())
    assert sorted(s["rank"] for s in data["layers"]) == list(range(1, 7))
    gains = [s["signals"]["graft_gain"] for s in data["layers"]]
    losses = [s["signals"]["knockout_loss"] for s in data["layers"]]
    assert any(gains) and all(math.isfinite(x) for x in gains + losses)
    assert [s["score"] for s in data["layers"]] == pytest.approx([(g + x) / 2 for g, x in zip(gains, losses)])
    run = data["config"]["from_run"]
    assert run["path"].endswith("run") and run["train_report"]["steps"] == 2 and run["train_report"]["kind"] == "full"
    # one forward recorded the rollouts, then base, run, and a graft and a knock-out per block
    assert data["cost"]["forward_passes"] == 2 * 6 + 3 and data["cost"]["forward_backward_passes"] == 0


def test_another_models_run_is_refused(organism_path, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    types = AutoConfig.from_pretrained(organism_path).layer_types
    config = AutoConfig.from_pretrained(organism_path, num_hidden_layers=4, layer_types=types[:4])
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "shallow")
    r = CliRunner().invoke(cli, ["rank", str(organism_path), "--from-run", str(tmp_path / "shallow")])
    assert r.exit_code == 2
    assert "is not an RL result of this model: it has 4 decoder layers (Qwen3ForCausalLM), the model 6" in r.output
    r = CliRunner().invoke(cli, ["rank", str(organism_path), "--from-run", str(tmp_path)])
    assert r.exit_code == 2 and "not a transformers model dir" in r.output


def test_the_probe_pass_trains_a_copy_and_leaves_the_model(organism, math_task):
    model, tok = organism
    assert "graft_gain" not in ProbeConfig().signals  # it costs an RL run
    before = _state(model)
    ranking = run_probe(model, tok, math_task, ProbeConfig(**FAST, signals=["graft_gain", "knockout_loss"],
                                                           score_weights={"graft_gain": 1.0}, predictor=None), progress=False)
    gains = [s.signals["graft_gain"] for s in ranking.layers]
    assert any(gains) and all(math.isfinite(g) for g in gains)
    assert ranking.cost["rl_steps"] == 1 and ranking.cost["forward_passes"] > 0
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())

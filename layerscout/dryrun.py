"""What `rank`, `train` and `calibrate` would cost, before they run (`--dry-run`): model size and depth from the
config alone (config.json, or a GGUF header; the model is built on the meta device, so no weight is read), the
planned rollouts, and the estimated peak memory on the chosen device, term by term. Bytes, with N parameters, N_b
in the blocks, N_t trained, w bytes per stored weight, c per compute element (2 under bf16 autocast), r per
residual-stream element (4 with fp32 weights), T = prompt + completion tokens, B sequences per micro-batch:

  weights        N·w                              (fp32 copies when the lookahead upcasts bf16 weights: N·4)
  activations    B·T·L·a, a = r·4h + c·(2h + 4·H·d + 4·KV·d + 4i)   per token and block, counted from a
                 Qwen3/Llama block's autograd graph (within 25 % of torch's saved tensors, tests/test_dryrun.py);
                 with gradient checkpointing B·T·(L·r·h + a)
  logits         TRL's fused LM head: one min(B·T, 4096) × min(V, 32768) fp32 tile (4 of them off CUDA, where
                 TRL's torch path makes temporaries) + the hidden states and their fp32 gradient 2·B·T·h·4
  KV cache       B_gen·T·L·2·KV·d·c while generating
  probe          ∇J accumulators N_b·4 and the probe sign N_b·1 on the device; θ0, Adam m, v (and fp32 masters of
                 bf16 weights) in host memory, N_b·(w + 8 (+4)); under autocast, its cached bf16 casts of every weight
                 that requires grad, N·2 while sampling (a loaded model's weights do): on an H200 (Qwen3-4B shape,
                 benchmarks/gpu_memory.py) they were the missing 7.0–7.8 GiB of the phases. The passes that
                 backpropagate into the blocks (policy_grad, group_moments) run with the cache off
                 (PassContext.logps): on the same shape policy_grad fell from 37.1 to 30.9 GiB, so they count none.
  GRPO (TRL)     grads N_t·4, AdamW N_t·8, bf16 autocast copies of the trained weights N_t·2, trained weights
                 upcast to fp32 N_t·(4 − w), a reference model N·w when beta > 0
  runtime        on CPU, 0.4 GiB for Python, torch and transformers with a model's modules (measured here)
The peak is the largest phase; fits = peak <= the device's memory. An estimate: allocator fragmentation, CUDA
context (~0.5 GB) and library workspaces come on top.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .errors import LayerscoutError

GIB = 2**30
FUSED_TILE = 4096  # TRL's chunked_logprob TOKEN_CHUNK_SIZE
FUSED_VOCAB_CHUNK = 32768
DEFAULT_PROMPT_TOKENS = 256  # when no tokenizer can be read to measure the task's prompts
CPU_RUNTIME = int(0.4 * GIB)  # RSS of Python + torch + transformers with a model's modules loaded, weights aside


@dataclass
class ModelShape:
    """A decoder's size and shape, read from its config alone."""

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    params: int          # every parameter, a tied head counted once
    block_params: int    # all decoder blocks together
    largest_param: int   # entries of the largest single tensor in a block


def model_config(name_or_path: str | None, gguf_file: str | None = None, revision: str | None = None,
                 task: str | None = None):
    """transformers config of a hub id, local dir, .gguf file or (None) `task`'s default organism; no weights read."""
    from transformers import AutoConfig

    if name_or_path is None:
        from .organisms import default_organism_path, task_organism

        name_or_path = str(default_organism_path(task_organism(task)))
    path = Path(name_or_path).expanduser()
    try:
        if path.is_file():
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        return AutoConfig.from_pretrained(name_or_path, gguf_file=gguf_file, revision=revision)
    except (OSError, ValueError) as e:
        raise LayerscoutError(f"cannot read a model config for {name_or_path!r}: {str(e).splitlines()[0]}") from None


def model_shape(name_or_path: str | None, gguf_file: str | None = None, revision: str | None = None,
                task: str | None = None) -> ModelShape:
    """Shape and parameter counts of a causal LM, from an empty (meta-device) model built from its config.

    >>> model_shape("tests/data/hub_configs/Qwen3-4B").params   # doctest: +SKIP
    4022468096
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .models import decoder_layers, num_parameters

    config = model_config(name_or_path, gguf_file, revision, task)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config()
    blocks = decoder_layers(model)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(
        name=str(name_or_path or "default organism"), model_type=text.model_type, num_layers=len(blocks),
        hidden_size=text.hidden_size, intermediate_size=getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
        num_heads=heads, num_kv_heads=getattr(text, "num_key_value_heads", None) or heads, head_dim=head_dim,
        vocab_size=text.vocab_size, tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        params=num_parameters(model),
        block_params=sum(num_parameters(b) for b in blocks),
        largest_param=max(p.numel() for b in blocks for p in b.parameters()))


def activation_bytes(shape: ModelShape, compute_bytes: int, residual_bytes: int) -> int:
    """Saved activations of one block per token (the `a` of the module docstring)."""
    h, i = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    return residual_bytes * 4 * h + compute_bytes * (2 * h + 4 * q + 4 * kv + 4 * i)


def _activations(shape, tokens: int, compute: int, residual: int, checkpointing: bool) -> int:
    a = activation_bytes(shape, compute, residual)
    if checkpointing:
        return tokens * (shape.num_layers * residual * shape.hidden_size + a)
    return tokens * shape.num_layers * a


def _logits(shape, tokens: int, device_type: str) -> int:
    """TRL's fused head: its tile (4 fp32 temporaries of it in the torch path used off CUDA), plus the hidden states
    and their fp32 gradient."""
    tiles = 1 if device_type == "cuda" else 4
    return (tiles * min(tokens, FUSED_TILE) * min(shape.vocab_size, FUSED_VOCAB_CHUNK) * 4
            + tokens * shape.hidden_size * 4 * 2)


def _kv_cache(shape, sequences: int, length: int, compute: int) -> int:
    return sequences * length * shape.num_layers * 2 * shape.num_kv_heads * shape.head_dim * compute


def _bytes_of(dtype: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]


def probe_memory(shape: ModelShape, probe, precision, prompt_tokens: int) -> dict:
    """Peak bytes per probe phase for ProbeConfig `probe` under Precision `precision`: {"phases": {phase:
    {term: bytes}}, "peak_phase", "peak_bytes"}, the rollouts and the passes its signals plan (passes.plan_passes);
    on CPU host-side state counts in the same memory."""
    from .passes import plan_passes
    from .signals import get_signal

    w, c = _bytes_of(precision.weights), _bytes_of(precision.compute)
    r = 4 if precision.weights == "float32" else w
    seq = prompt_tokens + probe.max_completion_length
    n, nb = shape.params, shape.block_params
    g = probe.num_generations
    rows = probe.batch_size if probe.batch_tokens is None else max(1, min(probe.batch_size, probe.batch_tokens // seq))
    sweep_batch = g * max(1, rows // g)  # whole groups (passes.PassContext.group_batches)
    gen_batch = max(probe.batch_size, 8)
    ckpt = probe.checkpointing_for(shape.params)
    weights = n * w
    casts = 2 if precision.compute != precision.weights else 0  # autocast's cache of each cast weight
    host_on_device = precision.device_type == "cpu"
    planned = plan_passes([n for name in probe.signal_names() for n in get_signal(name).needs])
    adam_host = nb * (w + 8 + (4 if w < 4 else 0)) if "update_steps" in planned else 0
    sign = nb if "lookahead" in planned else 0  # the int8 sign copy of ∇J, kept only for the lookahead
    phases = {
        "rollouts": {"weights": weights, "autocast_weight_copies": n * casts,
                     "kv_cache": _kv_cache(shape, gen_batch, seq, c),
                     "logits": gen_batch * shape.vocab_size * 4 * 2},
        "policy_grad": {"weights": weights, "grad_accumulators": nb * 4,
                        "probe_sign": sign,
                        "autograd_grad": shape.largest_param * w,  # each freed once accumulated
                        "activations": _activations(shape, sweep_batch * seq, c, r, ckpt),
                        "logits": _logits(shape, sweep_batch * seq, precision.device_type)},
        "grad_sweep": {"weights": weights, "grad_accumulators": nb * 4, "probe_sign": sign,
                       "activations": _activations(shape, sweep_batch * seq, c, r, ckpt),
                       "logits": _logits(shape, sweep_batch * seq, precision.device_type),
                       "ghost_grams": sweep_batch * seq * seq * 4 * 2},
        "update_steps": {"weights": weights, "grad_accumulators": nb * 4, "probe_sign": sign,
                         "activations": _activations(shape, rows * seq, c, r, ckpt),
                         "logits": _logits(shape, rows * seq, precision.device_type),
                         "adam_transients": shape.largest_param * 4 * 3,
                         **({"adam_state_host": adam_host} if host_on_device else {})},
        "lookahead": {"weights_fp32": n * 4, "probe_sign": nb,
                      "heldout_hidden_states": probe.num_prompts * g // 2 * seq * shape.hidden_size * 4,
                      "activations_no_grad": rows * seq * (shape.hidden_size + shape.intermediate_size) * 4},
        "attribution": {"weights": weights, "activations": _activations(shape, rows * seq, c, r, ckpt),
                        "block_outputs": shape.num_layers * rows * seq * shape.hidden_size * r,
                        "logits": _logits(shape, rows * seq, precision.device_type)},
        "group_moments": {"weights": weights, "moment_accumulators": nb * 4 * 3, "autograd_grads": nb * w,
                          "activations": _activations(shape, sweep_batch * seq, c, r, ckpt),
                          "logits": _logits(shape, sweep_batch * seq, precision.device_type)},
    }
    phases["own_attribution"] = dict(phases["attribution"])
    phases = {k: v for k, v in phases.items() if k == "rollouts" or k in planned}
    if host_on_device:
        for terms in phases.values():
            terms["runtime"] = CPU_RUNTIME
    out = _peak(phases)
    if not host_on_device:
        out["host_bytes"] = adam_host
    return out


def grpo_memory(shape: ModelShape, rl, precision, prompt_tokens: int, trained_blocks: int | None,
                micro_batch: int | None = None, gradient_checkpointing: bool | None = None) -> dict:
    """Peak bytes of a TRL GRPO run of RLConfig `rl`: full-parameter (trained_blocks None) or that many blocks.
    micro_batch (sequences per backward) and gradient_checkpointing default to what `rl` gives TRL on this model:
    prompts_per_step x num_generations / trl.gradient_accumulation_steps (RLConfig.sized_for), and
    trl.gradient_checkpointing."""
    if micro_batch is None:
        micro_batch = train_micro_batch(shape, rl)
    if gradient_checkpointing is None:
        gradient_checkpointing = bool(rl.trl.get("gradient_checkpointing", False))
    w, c = _bytes_of(precision.weights), _bytes_of(precision.compute)
    r = 4 if precision.weights == "float32" else w
    seq = prompt_tokens + rl.max_completion_length
    per_block = shape.block_params / shape.num_layers
    nt = shape.params if trained_blocks is None else int(per_block * trained_blocks)
    gen = rl.prompts_per_step * rl.num_generations
    mb = micro_batch
    autocast = precision.compute != precision.weights
    states = {"weights": shape.params * w, "trained_upcast_fp32": nt * (4 - w), "grads": nt * 4, "adam": nt * 8,
              **({"autocast_weight_copies": nt * 2} if autocast else {}),
              **({"reference_model": shape.params * w} if rl.beta > 0 else {})}
    if precision.device_type == "cpu":
        states["runtime"] = CPU_RUNTIME
    phases = {
        "generation": {**states, "kv_cache": _kv_cache(shape, gen, seq, c), "logits": gen * shape.vocab_size * 4 * 2},
        "train_step": {**states, "activations": _activations(shape, mb * seq, c, r, gradient_checkpointing),
                       "logits": _logits(shape, mb * seq, precision.device_type)},
    }
    return _peak(phases)


def train_micro_batch(shape: ModelShape, rl) -> int:
    """Completions per backward pass that TRL gets on this model (RLConfig.sized_for)."""
    steps = rl.sized_for(shape.params).trl.get("gradient_accumulation_steps", 1)
    return rl.prompts_per_step * rl.num_generations // steps


def _peak(phases: dict[str, dict[str, int]]) -> dict:
    totals = {name: sum(terms.values()) for name, terms in phases.items()}
    peak = max(totals, key=totals.get)
    return {"phases": {k: {t: int(v) for t, v in terms.items()} for k, terms in phases.items()},
            "totals": {k: int(v) for k, v in totals.items()}, "peak_phase": peak, "peak_bytes": int(totals[peak])}


# ---------------------------------------------------------------- plans printed by --dry-run

def device_capacity(device: str) -> tuple[str, int | None]:
    """(device type, memory in bytes or None when unknown here): a visible CUDA device's memory, or the host's."""
    import torch

    kind = "cuda" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            return kind, None
        index = torch.device(device).index if ":" in device else 0
        return kind, torch.cuda.get_device_properties(index or 0).total_memory
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return kind, int(line.split()[1]) * 1024
    except OSError:
        pass
    return kind, None


def planned_precision(device_type: str, dtype: str):
    """The Precision a run would use, without a model: auto = fp32 weights, bf16 autocast on CUDA."""
    from .precision import Precision

    weights = "float32" if dtype == "auto" else dtype
    compute = "bfloat16" if dtype == "auto" and device_type == "cuda" else weights
    return Precision(weights=weights, compute=compute, device_type=device_type)


def prompt_tokens(name_or_path: str | None, task, n: int = 32) -> tuple[int, str]:
    """Longest rendered prompt among n of the task's train prompts, in the model's tokens, when its tokenizer can
    be read here; else DEFAULT_PROMPT_TOKENS. Returns (tokens, how it was obtained)."""
    from .tasks import render_prompt

    from .models import load_tokenizer

    try:
        tok = load_tokenizer(name_or_path, task=task.name)  # no model: the task's own organism
    except (LayerscoutError, OSError, ValueError):
        return DEFAULT_PROMPT_TOKENS, "assumed (no tokenizer here)"
    prompts = task.load_prompts("train", n, 0)["prompt"]
    return max(len(tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"]) for p in prompts), "measured"


def _fits(estimate: dict, capacity: int | None) -> bool | None:
    return None if capacity is None else estimate["peak_bytes"] <= capacity


def plan_rank(model: str | None, recipe, device: str = "auto", dtype: str = "auto") -> dict:
    """What `layerscout rank MODEL --dry-run` prints: shape, planned rollouts, probe memory by phase."""
    from .recipes import build_task

    shape = model_shape(model, task=recipe.task)
    kind, capacity = device_capacity(device)
    precision = planned_precision(kind, dtype)
    task = build_task(recipe)
    worst = (task.ladder() or [(None, task)])[-1][1]  # plan for the hardest rung the estimate may pick
    p = recipe.probe
    if p.max_completion_length is None:
        from .sampling import DEFAULT_COMPLETION_LENGTH
        p = replace(p, max_completion_length=worst.max_completion_length or DEFAULT_COMPLETION_LENGTH)
    prompt, how = prompt_tokens(model, worst)
    estimate = probe_memory(shape, p, precision, prompt)
    return {"model": asdict(shape), "device": kind, "device_memory_bytes": capacity,
            "precision": precision.as_record(),
            "rollouts": {"prompts": p.num_prompts, "num_generations": p.num_generations,
                         "completions": p.num_prompts * p.num_generations,
                         "max_completion_length": p.max_completion_length, "prompt_tokens": prompt,
                         "prompt_tokens_source": how},
            "memory": estimate, "fits": _fits(estimate, capacity)}


def plan_train(model: str | None, task, rl, layers: list[int] | None, device: str = "auto",
               dtype: str = "auto") -> dict:
    """What `layerscout train ... --dry-run` prints: shape, planned steps and rollouts, GRPO memory."""
    shape = model_shape(model, task=task.name)
    kind, capacity = device_capacity(device)
    precision = planned_precision(kind, dtype)
    prompt, how = prompt_tokens(model, task)
    estimate = grpo_memory(shape, rl, precision, prompt, None if layers is None else len(layers))
    return {"model": asdict(shape), "device": kind, "device_memory_bytes": capacity,
            "precision": precision.as_record(), "layers": layers,
            "rollouts": {"steps": rl.max_steps, "prompts_per_step": rl.prompts_per_step,
                         "num_generations": rl.num_generations, "max_completion_length": rl.max_completion_length,
                         "prompt_tokens": prompt, "prompt_tokens_source": how,
                         "completions": rl.max_steps * rl.prompts_per_step * rl.num_generations,
                         "micro_batch": train_micro_batch(shape, rl)},
            "memory": estimate, "fits": _fits(estimate, capacity)}


def plan_calibrate(config) -> dict:
    """What `layerscout calibrate ... --dry-run` prints: the job count and the memory of its two kinds of run."""
    from .models import parse_layers
    from .recipes import build_task, load_recipe

    shape = model_shape(config.model, task=config.task)
    kind, capacity = device_capacity(config.device)
    precision = planned_precision(kind, config.dtype)
    recipe = load_recipe(config.task, [f"task_options.{k}={json.dumps(v)}" for k, v in config.task_options.items()])
    prompt, how = prompt_tokens(config.model, build_task(recipe))
    rl = config.rl_config(config.seeds[0])
    layers = parse_layers(config.layers, shape.num_layers)
    estimates = {"full-parameter run": grpo_memory(shape, rl, precision, prompt, None),
                 "single-block run": grpo_memory(shape, rl, precision, prompt, 1)}
    return {"model": asdict(shape), "device": kind, "device_memory_bytes": capacity,
            "precision": precision.as_record(), "jobs": len(config.seeds) * (1 + len(layers)),
            "rollouts": {"runs": len(config.seeds) * (1 + len(layers)), "steps_per_run": rl.max_steps,
                         "prompts_per_step": rl.prompts_per_step, "num_generations": rl.num_generations,
                         "max_completion_length": rl.max_completion_length, "prompt_tokens": prompt,
                         "prompt_tokens_source": how, "micro_batch": train_micro_batch(shape, rl)},
            "estimates": estimates, "fits": _fits(estimates["full-parameter run"], capacity)}


def format_plan(plan: dict) -> str:
    """The human-readable dry-run report."""
    m, ro = plan["model"], plan["rollouts"]
    cap = plan["device_memory_bytes"]
    lines = [f"model {m['name']} ({m['model_type']}): {m['params'] / 1e9:.3g} B parameters, {m['num_layers']} blocks "
             f"({m['block_params'] / 1e9:.3g} B in blocks), hidden {m['hidden_size']}, vocab {m['vocab_size']}",
             f"precision {json.dumps(plan['precision'])}",
             "rollouts " + ", ".join(f"{k} {v}" for k, v in ro.items())]
    for label, est in (plan["estimates"] if "estimates" in plan else {"": plan["memory"]}).items():
        lines.append(f"estimated peak memory{' (' + label + ')' if label else ''}: {est['peak_bytes'] / GIB:.1f} GiB "
                     f"in {est['peak_phase']}"
                     + (f" of {cap / GIB:.0f} GiB on {plan['device']}" if cap else f" ({plan['device']} memory unknown here)")
                     + (f"; host state {est['host_bytes'] / GIB:.1f} GiB" if est.get("host_bytes") else ""))
        terms = est["phases"][est["peak_phase"]]
        lines.append("  " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in terms.items()) + " (GiB)")
    if plan.get("fits") is False:
        lines.append("does not fit: try gradient_checkpointing, a smaller batch_size / micro-batch, or fewer layers")
    return "\n".join(lines)

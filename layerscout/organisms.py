"""Model organisms: tiny character-level decoders trained here from scratch by supervised fine-tuning on a
task's train split with noisy labels: each time an example is seen, its label is the gold answer with
probability `label_accuracy` (default 0.4) and the task's near miss otherwise (math: the answer + 1). The model
learns to sample right answers only sometimes (pass@1 low, pass@8 high), so GRPO has something to sharpen, as
on real LLMs. The default (Qwen3, 12 layers, hidden 128, 2.4 M parameters, math, 1600 steps) takes about 6 min
on a 2-core CPU (10 when other jobs share the cores), once, into the layerscout cache; it is the model every
command uses when none is named.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import random
import shutil
import string
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .config import _f
from .errors import LayerscoutError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

ARCHS = ("qwen3", "qwen2", "llama")
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"  # token ids 0, 1, 2
# Bump when a change to the build below changes the weights it produces: it is part of the cache key.
# 2: noisy labels, a fixed number of SFT steps, 12 layers (was: clean labels until greedy accuracy entered 20-60 %)
RECIPE_VERSION = 2
# Sampled completions per held-out prompt for the pass@1 / pass@k the record reports.
PASS_K = 8
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ m['content'] + '\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'Q: ' + m['content'] + '\\n' }}"
    "{%- else -%}{{ 'A: ' + m['content'] + eos_token + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'A: ' }}{%- endif -%}"
)


def build_tokenizer(chars: str | None = None) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: ids 0-2 are <pad>, <eos>, <unk>, then one id per character of `chars`
    (default: printable ASCII, 100 characters). Its chat template renders a user turn as "Q: {q}\\n" and
    the generation prompt as "A: "; an assistant turn ends with <eos>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for c in string.printable if chars is None else chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, chat_template=CHAT_TEMPLATE,
        model_max_length=256, clean_up_tokenization_spaces=False)


def build_model(arch: str, num_layers: int, vocab_size: int, seed: int, hidden_size: int = 128,
                num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int | None = None,
                max_position_embeddings: int = 256) -> PreTrainedModel:
    """A randomly initialised decoder (`arch`: qwen3 | qwen2 | llama), fp32, same weights for the same seed.

    Embeddings are tied to the LM head, as in SmolLM2 and the small Qwen3 models. intermediate_size defaults
    to 3 * hidden_size (SwiGLU). Example: `build_model("qwen3", 8, 103, seed=0)` has ~1.6 M parameters.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    configs = {"qwen3": Qwen3Config, "qwen2": Qwen2Config, "llama": LlamaConfig}
    if arch not in configs:
        raise LayerscoutError(f"Unknown arch {arch!r}. Available: {', '.join(ARCHS)}")
    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise LayerscoutError(
            f"hidden_size ({hidden_size}) must divide by num_attention_heads ({num_attention_heads}), "
            f"which must divide by num_key_value_heads ({num_key_value_heads})")
    config = configs[arch](
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        head_dim=hidden_size // num_attention_heads, intermediate_size=intermediate_size or 3 * hidden_size,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


@dataclass
class OrganismConfig:
    """How to build one organism. With these defaults a qwen3 / qwen2 / llama organism samples right answers
    often enough for GRPO to sharpen them (12-layer qwen3 math: pass@1 0.36, pass@8 0.89). Measured: a 100-step
    full-parameter GRPO run gains +0.10 to +0.13 (5-6 paired SE) in about a minute on 2 CPU cores (math); the
    code organism gains +0.33 in 50 steps (calibration/README.md)."""

    arch: str = _f("qwen3", "decoder architecture: qwen3 | qwen2 | llama")
    num_layers: int = _f(12, "decoder blocks")
    hidden_size: int = _f(128, "model width")
    task: str = _f("math", "registered task whose train split is the SFT data and held-out split the eval")
    task_options: dict[str, Any] = _f({}, "options passed to get_task (empty = the task's defaults)")
    seed: int = _f(0, "seed for weights, data sampling, label noise and batch order")
    label_accuracy: float = _f(0.4, "probability that an SFT label is the gold answer (else the task's near miss), "
                                    "redrawn every time an example is seen")
    max_steps: int = _f(1600, "SFT optimizer steps (about convergence for the defaults)")
    batch_size: int = _f(32, "sequences per step")
    learning_rate: float = _f(3e-3, "AdamW peak learning rate (linear warmup, then constant)")
    warmup_steps: int = _f(50, "linear warmup steps")
    weight_decay: float = _f(0.1, "AdamW weight decay")
    train_prompts: int = _f(1000, "unique training questions drawn from the task's train split")
    eval_prompts: int = _f(200, "held-out questions for the final greedy accuracy and pass@1 / pass@8")
    max_new_tokens: int = _f(8, "generation budget per held-out answer")

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise LayerscoutError(f"Unknown arch {self.arch!r}. Available: {', '.join(ARCHS)}")
        if not 0.0 < self.label_accuracy <= 1.0:
            raise LayerscoutError(f"label_accuracy must be in (0, 1]; got {self.label_accuracy}")
        for name in ("num_layers", "hidden_size", "max_steps", "batch_size", "train_prompts", "eval_prompts",
                     "max_new_tokens"):
            if getattr(self, name) < 1:
                raise LayerscoutError(f"{name} must be >= 1; got {getattr(self, name)}")

    def key(self) -> str:
        """Cache directory name: <arch>-L<n>-<task>-s<seed>-<hash of the whole config and recipe version>."""
        blob = json.dumps([RECIPE_VERSION, dataclasses.asdict(self)], sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
        return f"{self.arch}-L{self.num_layers}-{self.task}-s{self.seed}-{digest}"


def build_organism(config: OrganismConfig, output: str | Path, progress: bool = True) -> dict:
    """Train an organism per `config` and save it to `output` (a new dir, published by one atomic rename).

    organism.json records the held-out greedy accuracy, pass@1 and pass@8 (8 samples at temperature 1) at the
    end, and warns on stderr when RL would have little to sharpen (pass@8 < 0.5, or pass@1 > 0.8). Returns
    organism.json's content.
    """
    output = Path(output)
    if output.exists():
        raise LayerscoutError(f"{output} already exists; remove it or choose another output")
    with _one_thread():
        record, model, tokenizer = _train(config, progress)
    _save(model, tokenizer, record, output)
    return record


def _train(config: OrganismConfig, progress: bool) -> tuple[dict, Any, Any]:
    """The SFT loop of build_organism; returns (organism.json record, model, tokenizer)."""
    import torch

    from .models import num_parameters
    from .tasks import get_task

    start = time.perf_counter()
    task = get_task(config.task, **config.task_options)
    tokenizer = build_tokenizer()
    model = build_model(config.arch, config.num_layers, len(tokenizer), config.seed, hidden_size=config.hidden_size)
    train = _setup_train_data(task, tokenizer, config)

    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                            betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)))
    batches = _batches(train, config, tokenizer)
    bar = _progress_bar(config.max_steps, progress)
    model.train()
    for _, batch in zip(range(config.max_steps), batches):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    record = {
        "config": dataclasses.asdict(config),
        "recipe_version": RECIPE_VERSION,
        "task_version": task.version,
        **_headroom(model, tokenizer, task, config),
        "steps": config.max_steps,
        "final_loss": round(loss.item(), 4),
        "num_parameters": num_parameters(model),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "versions": _versions(),
    }
    if record["pass_at_k"] < 0.5 or record["pass_at_1"] > 0.8:
        print(f"layerscout: organism pass@1 {record['pass_at_1']:.2f}, pass@{PASS_K} {record['pass_at_k']:.2f}: "
              f"RL has little to sharpen (want pass@1 low, pass@{PASS_K} high)", file=sys.stderr)
    return record, model, tokenizer


def _headroom(model, tokenizer, task, config: OrganismConfig) -> dict:
    """Greedy accuracy, pass@1 (mean reward of PASS_K samples) and pass@PASS_K on held-out prompts."""
    from .evaluate import evaluate

    common = dict(n=config.eval_prompts, seed=config.seed, max_new_tokens=config.max_new_tokens, batch_size=256)
    greedy = evaluate(model, tokenizer, task, **common)
    sampled = evaluate(model, tokenizer, task, num_samples=PASS_K, **common)
    return {"heldout_accuracy": greedy["score"], "pass_at_1": sampled["score"],
            "pass_at_k": sum(r > 0 for r in sampled["per_prompt"]) / len(sampled["per_prompt"]), "k": PASS_K}


# The organism a task's commands use when no model is named (OrganismConfig fields); other tasks: OrganismConfig().
TASK_ORGANISMS: dict[str, dict[str, Any]] = {
    "math": {},  # the OrganismConfig defaults: 2-term arithmetic on 1-digit numbers
    # one-line Python functions from templated specs (tasks/code_templates.py): answers up to 34 characters
    "code": {"task": "code", "task_options": {"source": "templates"}, "max_new_tokens": 40},
    # TWX Simon Says with three instructions, the prompt only the instruction on screen ("Simon says, 'eat apple'.",
    # ~35 characters), so prompt and action fit the 256 positions; held-out games from the training fold (TWX's
    # other folds have other objects, which a character model would have to copy unseen). The noisy labels are other
    # valid actions of the state (AgentTask.sft_examples), each ending the game: a step is right about label_accuracy
    # (0.7) of the time, a game of three 0.7^3 = 0.34 (pass@1 0.34, pass@8 0.91 after 800 steps, which it reaches).
    "agent": {"task": "agent", "task_options": {
        "game": "simonsays", "game_params": {"gameLength": 3, "numDistractors": 2, "memorization": 0},
        "max_turns": 3, "history": 0, "show_task": False, "show_actions": False, "heldout_fold": "train"},
        "label_accuracy": 0.7, "max_steps": 800, "max_new_tokens": 24},
}


def task_organism(task: str | None) -> OrganismConfig:
    """The default organism's config for a registered task name (TASK_ORGANISMS; the math organism otherwise).
    Example: `default_organism_path(task_organism("agent"))`."""
    return OrganismConfig(**copy.deepcopy(TASK_ORGANISMS.get(task or "", {})))


def default_organism_path(config: OrganismConfig | None = None, progress: bool = True) -> Path:
    """The default organism's directory, built on first use into cache_dir()/organisms/<config.key()>/.

    Two processes racing to build it both train, but only the first rename publishes; the other discards its
    copy and uses the published one. Example: `AutoModelForCausalLM.from_pretrained(default_organism_path())`.
    """
    from .models import cache_dir

    config = config or OrganismConfig()
    path = cache_dir() / "organisms" / config.key()
    if not path.exists():
        if progress:
            print(f"layerscout: building the default model organism into {path} (once)", file=sys.stderr)
        try:
            build_organism(config, path, progress=progress)
        except _AlreadyPublished:
            pass
    return path


# ---------------------------------------------------------------------- helpers


class _AlreadyPublished(LayerscoutError):
    """Another process published the same output while this one was building it."""


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one intra-op thread: this model's small matmuls gain little from a second thread, on shared
    cores a contended second thread made steps 2-9x slower (measured), and the weights do not then depend
    on the machine's thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _setup_train_data(task: Any, tokenizer: Any, config: OrganismConfig) -> list[tuple[list[int], str, Any]]:
    """(prompt ids, gold answer, near miss) per training example (task.sft_examples: a question, or one step of an
    expert trajectory); the label is drawn per batch (_batches)."""
    from .tasks import render_prompt

    examples = task.sft_examples(config.train_prompts, config.seed)
    prompts = tokenizer([render_prompt(tokenizer, m) for m, _, _ in examples], add_special_tokens=False)["input_ids"]
    return [(p, a, miss) for p, (_, a, miss) in zip(prompts, examples, strict=True)]


def _batches(train: list, config: OrganismConfig, tokenizer: Any) -> Iterator[dict]:
    """Endless collated batches: a fresh seeded permutation per epoch, each epoch's ragged tail dropped; each
    label is the gold answer with probability label_accuracy, else the task's near miss, drawn anew each time."""
    import torch

    gen = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    batch_size = min(config.batch_size, len(train))
    while True:
        order = torch.randperm(len(train), generator=gen).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            examples = []
            for prompt, answer, near_miss in (train[j] for j in order[i:i + batch_size]):
                label = answer if rng.random() < config.label_accuracy else near_miss(rng)
                examples.append((prompt, tokenizer(label, add_special_tokens=False)["input_ids"]
                                 + [tokenizer.eos_token_id]))
            yield _collate(examples)


def _collate(examples: list[tuple[list[int], list[int]]]) -> dict:
    """Right-padded input_ids / attention_mask / labels (B, T); labels are -100 except on answer tokens."""
    import torch

    width = max(len(p) + len(a) for p, a in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)  # 0 = <pad>
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, a) in enumerate(examples):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(p + a)
        mask[i, :n] = 1
        labels[i, len(p):n] = torch.tensor(a)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="organism", unit="step", file=sys.stderr, disable=not enabled)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("layerscout", "torch", "transformers", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _save(model: Any, tokenizer: Any, record: dict, output: Path) -> None:
    """Write everything into a sibling temp dir, then rename it to `output` in one step."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "organism.json").write_text(json.dumps(record, indent=2) + "\n")
        os.rename(tmp, output)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if output.exists():
            raise _AlreadyPublished(f"{output} already exists; remove it or choose another output") from None
        raise

"""Typed configs with defaults that run on a 2-core CPU, and the one YAML loader (includes, dotted overrides,
type checks) that turns probe recipes into them. Every field's `help` metadata feeds `--help` and the docs."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LayerscoutError

LOSS_TYPES = ("grpo", "dr_grpo", "gigpo")  # GiGPO: multi-turn tasks only (multiturn.py)


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelSpec:
    """Where a model comes from and where it runs. `name_or_path=None` means the embedded default organism."""

    name_or_path: str | None = _f(None, "hub id, local model dir or .gguf file; None = default organism")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    dtype: str = _f("auto", "weights' dtype: auto (float32; on CUDA computed under bf16 autocast) | float32 | "
                            "bfloat16 | float16")
    gguf_file: str | None = _f(None, "GGUF file name inside a hub repo or dir")
    revision: str | None = _f(None, "hub revision")

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise LayerscoutError(f"dtype must be auto, float32, bfloat16 or float16; got {self.dtype!r}")


# The probe checkpoints block activations from this model size up (None in ProbeConfig.gradient_checkpointing): at
# SmolLM2-135M it halves the gradient pass's memory above the weights for 1.3x its time; on the 1.6M-parameter
# organisms activations are a few MB and the recompute only costs time.
CHECKPOINT_FROM_PARAMS = 50_000_000
# From that size up, an RL run that leaves trl.gradient_accumulation_steps unset gives TRL backward passes of at most
# this many completions (RLConfig.sized_for). On SmolLM2-135M, 32 completions in one backward held ~4 GB of
# activations (single-block peak 5.1 GB); micro-batches of 8 peak at 2.2 GB in the same step time.
TRAIN_MICRO_BATCH = 8


@dataclass
class ProbeConfig:
    """One short RL probe: a single round of rollouts, then signals computed from it. Sized so that probing a
    30-layer, 135M-parameter model costs a few GRPO steps on a 2-core CPU."""

    num_prompts: int = _f(16, "prompts sampled for the probe (prompt groups)")
    num_generations: int = _f(4, "completions per prompt (TRL's num_generations)")
    max_completion_length: int | None = _f(
        None, "max new tokens per completion (TRL's max_completion_length); None = what the task needs for a direct "
              "answer (math: 32 for sums up to 512 for competition problems), plus thinking_tokens when thinking")
    enable_thinking: bool = _f(False, "hybrid thinking chat templates (Qwen3): let the model think before answering. "
                                      "Off by default: the probe needs finished answers within a short budget")
    thinking_tokens: int = _f(1024, "completion tokens added for the thinking block when enable_thinking is on")
    few_shot: int = _f(3, "worked examples before each question for base models (no chat template)")
    pass_band: list[float] = _f([0.2, 0.8], "group pass rates the pass-rate estimate aims for: it climbs the task's "
                                            "difficulty ladder while the mean pass rate is above the band")
    estimate_prompts: int = _f(4, "prompts per rung in the pass-rate estimate (num_generations completions each)")
    dynamic_sampling: bool = _f(True, "DAPO dynamic sampling: draw more prompts and keep only groups whose rewards "
                                      "differ, until num_prompts of them or prompt_budget prompts")
    prompt_budget: int | None = _f(None, "most prompts drawn for the probe, the chosen rung's estimate prompts "
                                         "included; None = 3 * num_prompts")
    temperature: float = _f(1.0, "sampling temperature")
    top_p: float = _f(1.0, "nucleus sampling")
    loss_type: str = _f("grpo", "advantage/loss normalisation: grpo | dr_grpo | gigpo (multi-turn tasks: episode + "
                                "anchor-state step advantages, gamma 0.95, omega 1)")
    lookahead_fraction: float = _f(0.5, "share of prompt groups held out to score the lookahead step")
    update_steps: int = _f(3, "Adam steps on the rollouts for the update-magnitude signal")
    learning_rate: float = _f(1e-5, "Adam learning rate of the update-magnitude steps")
    lookahead_lr: float = _f(1e-4, "size of the one-block lookahead step (first Adam step = lr * sign(grad))")
    batch_size: int = _f(8, "sequences per forward/backward pass (the gradient sweep fills each pass with whole "
                            "prompt groups up to this many sequences; a larger group gets a pass of its own)")
    batch_tokens: int | None = _f(512, "most tokens (sequences x padded length) per forward/backward pass, on top of "
                                      "batch_size: activations and TRL's log-prob tiles grow with it (a prompt group "
                                      "larger than this still gets one pass of its own); None = batch_size alone")
    gradient_checkpointing: bool | None = _f(
        None, "recompute each block's activations in the backward passes: about one more forward, for a fraction of "
              "the activation memory (SmolLM2-135M sweep: 1.0 GB less at peak); None = on for models of "
              "CHECKPOINT_FROM_PARAMS (50M) parameters or more, off below, where it costs time and saves little")
    signals: list[str] = _f(
        [], "signals to compute and record besides the ones the score needs (the predictor's inputs; with "
            "predictor null, score_weights' signals); [all] = every probe signal (signals.ALL_SIGNALS), the features "
            "`layerscout fit` learns from. See `layerscout signals ls`",
    )
    predictor: str | None = _f(
        "default", "the fitted predictor that scores the blocks from the signals: \"default\" (the one shipped in "
                   "probes/predictor.json, fitted on the calibration sweeps), a JSON file from `layerscout fit`, or "
                   "null for the score_weights rule")
    score_weights: dict[str, float] = _f(
        {"attribution": 1.0},
        "with predictor null: ranking score = weighted mean of these signals' within-model percentile ranks "
        "(attribution alone was recipe version 2's rule, chosen on the recipe-1 sweeps; calibration/README.md)",
    )
    graft_steps: int = _f(5, "graft_gain / knockout_loss: steps of their short full-parameter GRPO run")
    graft_learning_rate: float = _f(1e-4, "graft_gain / knockout_loss: learning rate of that run")
    graft_prompts: int = _f(32, "graft_gain / knockout_loss (and rank --from-run): held-out prompts whose base-policy "
                                "rollouts score every graft")
    seed: int = _f(0, "seed for prompt sampling, generation and steps")

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise LayerscoutError(
                "group-relative advantages need at least 2 generations per prompt; "
                f"got {self.num_generations}")
        if self.num_prompts < 2:
            raise LayerscoutError(f"num_prompts must be >= 2 (one group probes, one scores the lookahead); "
                                  f"got {self.num_prompts}")
        if self.loss_type not in LOSS_TYPES:
            raise LayerscoutError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {self.loss_type!r}")
        if not 0.0 < self.lookahead_fraction < 1.0:
            raise LayerscoutError(f"lookahead_fraction must be in (0, 1); got {self.lookahead_fraction}")
        for name in ("max_completion_length", "batch_size", "batch_tokens", "graft_steps", "graft_prompts",
                     "estimate_prompts", "thinking_tokens", "prompt_budget"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise LayerscoutError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.graft_learning_rate <= 0:
            raise LayerscoutError(f"graft_learning_rate must be > 0; got {self.graft_learning_rate}")
        if self.few_shot < 0:
            raise LayerscoutError(f"few_shot must be >= 0; got {self.few_shot}")
        if len(self.pass_band) != 2 or not 0 <= self.pass_band[0] <= self.pass_band[1] <= 1:
            raise LayerscoutError(f"pass_band must be [lo, hi] with 0 <= lo <= hi <= 1; got {self.pass_band}")
        if self.prompt_budget is None:
            self.prompt_budget = 3 * self.num_prompts
        if self.prompt_budget < self.num_prompts:
            raise LayerscoutError(f"prompt_budget ({self.prompt_budget}) must be >= num_prompts ({self.num_prompts})")
        if self.update_steps < 0:
            raise LayerscoutError(f"update_steps must be >= 0; got {self.update_steps}")
        from .signals import ALL_SIGNALS

        self.signals = list(dict.fromkeys(n for s in self.signals for n in (ALL_SIGNALS if s == "all" else (s,))))
        self.signal_names()  # unknown signal names and a missing or bad predictor file fail here

    def checkpointing_for(self, num_params: int) -> bool:
        """gradient_checkpointing as set, else on from CHECKPOINT_FROM_PARAMS parameters."""
        if self.gradient_checkpointing is not None:
            return self.gradient_checkpointing
        return num_params >= CHECKPOINT_FROM_PARAMS

    def signal_names(self) -> list[str]:
        """Every signal the probe computes: `signals`, then the score's inputs (predictor's, else score_weights')."""
        from .predictor import load_predictor
        from .signals import get_signal  # unknown names fail with suggestions

        predictor = load_predictor(self.predictor)
        scored = predictor.signals if predictor is not None else list(self.score_weights)
        names = list(dict.fromkeys([*self.signals, *scored]))
        for name in names:
            get_signal(name)
        return names


# ---------------------------------------------------------------- YAML -> dataclass

def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        k, v = typing.get_args(tp) or (Any, Any)
        return isinstance(value, dict) and all(_type_ok(a, k) and _type_ok(b, v) for a, b in value.items())
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_dict(cls: type, data: dict, source: str = "config") -> Any:
    """Build dataclass `cls` from `data`, reporting every unknown key, missing key and wrong type at once."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    problems = [f"{source}: unknown key {k!r}" for k in data if k not in names]
    problems += [f"{source}: missing key {f.name!r}" for f in fields if f.name not in data
                 and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for k, v in data.items():
        if k in names and not _type_ok(v, hints[k]):
            problems.append(f"{source}: {k} expects {_type_name(hints[k])}, got {v!r}")
    if problems:
        raise LayerscoutError("; ".join(problems))
    return cls(**{k: (float(v) if hints[k] is float and isinstance(v, int) else v) for k, v in data.items()})


@functools.cache
def _yaml_loader() -> type:
    """SafeLoader with YAML 1.2's float rule (`3e-4`), built once."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                 list("-+0123456789."))
    return Loader


def yaml_load(text: str) -> Any:
    """yaml.safe_load, but `3e-4` is a float as in YAML 1.2 and JSON (PyYAML follows YAML 1.1, where a float
    needs a dot, so learning rates written the usual way would arrive as strings)."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` (dotted keys allowed); the value is parsed as YAML so `32`, `0.1`, `[a, b]` get types."""
    import yaml

    if "=" not in text:
        raise LayerscoutError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml_load(raw)
    except yaml.YAMLError as e:
        raise LayerscoutError(f"override {text!r}: {e}") from None
    return key.strip(), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        key, value = parse_override(text)
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise LayerscoutError(f"override {text!r}: {p} is not a mapping")
        node[leaf] = value
    return data


def load_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a YAML mapping, resolving `include:` (a path or list, relative to the file) depth-first;
    keys in the including file win."""
    import yaml

    path = Path(path)
    if path.resolve() in _seen:
        raise LayerscoutError(f"{path}: include cycle")
    try:
        data = yaml_load(path.read_text())
    except FileNotFoundError:
        raise LayerscoutError(f"no such file: {path}") from None
    except yaml.YAMLError as e:
        raise LayerscoutError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise LayerscoutError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    includes = data.pop("include", [])
    merged: dict = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        merged = _deep_merge(merged, load_yaml(path.parent / inc, _seen + (path.resolve(),)))
    return _deep_merge(merged, data)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------- RL runs (training.py)

# GRPOConfig fields that layerscout derives from RLConfig or from the command's options; the `trl` block may not
# set them (the value says what sets them instead).
SET_BY_LAYERSCOUT = {
    "loss_type": "RLConfig.loss_type (--algo)", "scale_rewards": "RLConfig.loss_type (dr_grpo turns it off)",
    "learning_rate": "RLConfig.learning_rate", "beta": "RLConfig.beta", "max_grad_norm": "RLConfig.max_grad_norm",
    "num_generations": "RLConfig.num_generations", "max_completion_length": "RLConfig.max_completion_length",
    "per_device_train_batch_size": "RLConfig.prompts_per_step", "max_steps": "RLConfig.max_steps (--steps)",
    "temperature": "RLConfig.temperature", "top_p": "RLConfig.top_p", "seed": "RLConfig.seed (--seed)",
    "logging_steps": "RLConfig.logging_steps", "save_steps": "RLConfig.save_steps",
    "save_strategy": "RLConfig.save_steps (0 = no checkpoints)", "save_total_limit": "RLConfig.save_total_limit",
    "output_dir": "the --output option", "disable_tqdm": "the --quiet option",
    "resume_from_checkpoint": "the --resume option", "use_cpu": "the --device option",
}
# RLConfig fields and `trl` keys that may change when a run is resumed: they change bookkeeping, not the run.
RESUMABLE_FIELDS = ("max_steps", "logging_steps", "save_steps", "save_total_limit")
RESUMABLE_TRL = ("report_to", "run_name", "project", "trackio_", "logging_", "log_", "num_completions_to_print",
                 "push_to_hub", "hub_", "save_", "dataloader_")


@dataclass
class RLConfig:
    """One GRPO / Dr. GRPO run through TRL's GRPOTrainer (multi-turn tasks and GiGPO: multiturn.py). Names shared with TRL mean the same thing; defaults
    run 20 steps on the default organism in seconds on a 2-core CPU. `to_grpo_config` adds the CPU-safe
    settings, then any other GRPOConfig field from `trl`. The learning rate is tuned for the full-parameter run
    and reused unchanged per layer (paper)."""

    loss_type: str = _f("grpo", "grpo | dr_grpo (Dr. GRPO also turns off the std division: scale_rewards=False) | "
                                "gigpo (multi-turn tasks: episode + anchor-state step advantages)")
    learning_rate: float = _f(1e-4, "AdamW learning rate, constant schedule")
    beta: float = _f(0.0, "KL coefficient to the start-of-run model (0 = no reference model)")
    num_generations: int = _f(4, "completions per prompt (TRL's num_generations)")
    max_completion_length: int = _f(32, "max new tokens per completion (TRL's max_completion_length)")
    prompts_per_step: int = _f(8, "prompts per optimizer step over all processes and accumulation steps; TRL's "
                                  "per_device_train_batch_size = prompts_per_step * num_generations / "
                                  "(processes * gradient_accumulation_steps)")
    max_steps: int = _f(20, "optimizer steps")
    train_prompts: int = _f(1024, "prompts drawn from the task's train split, cycled in seeded order; fixed "
                                  "independently of max_steps so a resumed, longer run sees the same data")
    temperature: float = _f(1.0, "sampling temperature of the rollouts")
    top_p: float = _f(1.0, "nucleus sampling of the rollouts")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")
    seed: int = _f(0, "seed for prompt order, sampling and training")
    logging_steps: int = _f(1, "log reward and loss every N steps (the report's reward curve)")
    save_steps: int = _f(10, "checkpoint every N steps for --resume (0 = no checkpoints)")
    save_total_limit: int | None = _f(2, "keep only the newest N checkpoints (None = all)")
    eval_prompts: int = _f(64, "held-out prompts scored before and after training")
    eval_samples: int = _f(1, "completions per held-out prompt (1 = greedy)")
    eval_seed: int | None = _f(None, "seed that draws the held-out prompts; None = the run's seed. Fix it to score "
                                     "every seed of a comparison on the same prompts")
    train_embeddings: bool = _f(False, "also train the input embeddings (the paper keeps them frozen)")
    train_head: bool = _f(False, "also train the LM head (the paper keeps it frozen)")
    gamma: float = _f(0.95, "GiGPO: discount of the step returns that anchor-state groups compare")
    step_advantage_w: float = _f(1.0, "GiGPO: weight omega of the step advantage in A = A^E + omega * A^S")
    trl: dict[str, Any] = _f({}, "any other trl.GRPOConfig field, passed through as is (e.g. report_to, "
                                 "gradient_accumulation_steps, gradient_checkpointing, use_vllm, epsilon, "
                                 "num_iterations); -o trl.report_to=tensorboard")

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise LayerscoutError(f"loss_type must be one of {', '.join(LOSS_TYPES)}; got {self.loss_type!r}")
        if self.num_generations < 2:
            raise LayerscoutError(
                "group-relative advantages need at least 2 generations per prompt; "
                f"got {self.num_generations}")
        if not 0 <= self.gamma <= 1:
            raise LayerscoutError(f"gamma must be in [0, 1]; got {self.gamma}")
        for name in ("max_completion_length", "prompts_per_step", "max_steps", "train_prompts", "logging_steps",
                     "eval_prompts", "eval_samples"):
            if getattr(self, name) < 1:
                raise LayerscoutError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise LayerscoutError(f"learning_rate must be > 0; got {self.learning_rate}")
        if self.beta < 0:
            raise LayerscoutError(f"beta must be >= 0; got {self.beta}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise LayerscoutError(f"need temperature > 0 and 0 < top_p <= 1; got {self.temperature}, {self.top_p}")
        if self.save_steps < 0 or self.max_grad_norm < 0:
            raise LayerscoutError("save_steps and max_grad_norm must be >= 0")
        if self.trl:
            check_trl_fields(self.trl)

    def sized_for(self, num_params: int, processes: int = 1) -> RLConfig:
        """This config with trl.gradient_accumulation_steps chosen when unset: from CHECKPOINT_FROM_PARAMS
        parameters, backward passes of at most TRAIN_MICRO_BATCH completions; below, one per step. Rollouts and
        the loss are unchanged: TRL still generates all completions of a step at once."""
        completions = self.prompts_per_step * self.num_generations
        if "gradient_accumulation_steps" in self.trl or num_params < CHECKPOINT_FROM_PARAMS or completions % processes:
            return self
        steps = accumulation_steps(completions // processes, TRAIN_MICRO_BATCH)
        return self if steps == 1 else dataclasses.replace(self, trl={**self.trl, "gradient_accumulation_steps": steps})

    @property
    def scale_rewards(self) -> bool:
        """GRPO divides advantages by the group std; Dr. GRPO does not (TRL needs both settings)."""
        return self.loss_type != "dr_grpo"

    def identity(self) -> dict:
        """The fields that must match for a checkpoint of this run to be resumed (not RESUMABLE_* ones)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE_FIELDS}
        data["trl"] = {k: v for k, v in self.trl.items() if not k.startswith(RESUMABLE_TRL)}
        return data

    def to_grpo_config(self, output_dir: str | Path, progress: bool = True, use_cpu: bool | None = None,
                       processes: int = 1) -> Any:
        """The equivalent `trl.GRPOConfig`: layerscout's settings (CPU-safe when the model is on CPU: use_cpu, no
        bf16), then every `trl` field on top. `processes`: data-parallel world size (accelerate launch)."""
        import importlib.util

        import torch
        from trl import GRPOConfig

        if use_cpu is None:
            use_cpu = not torch.cuda.is_available()
        accumulation = self.trl.get("gradient_accumulation_steps", 1)
        completions = self.prompts_per_step * self.num_generations
        if not isinstance(accumulation, int) or accumulation < 1 or completions % (accumulation * processes):
            raise LayerscoutError(
                f"prompts_per_step * num_generations = {completions} completions per step must split evenly over "
                f"{processes} process(es) x {accumulation} accumulation step(s)")
        if self.trl.get("use_vllm") and importlib.util.find_spec("vllm") is None:
            raise LayerscoutError("trl.use_vllm needs vLLM: pip install vllm (and a CUDA GPU)")
        args = dict(
            output_dir=str(output_dir),
            loss_type=self.loss_type, scale_rewards=self.scale_rewards, beta=self.beta,
            learning_rate=self.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
            max_grad_norm=self.max_grad_norm,
            num_generations=self.num_generations, max_completion_length=self.max_completion_length,
            per_device_train_batch_size=completions // (accumulation * processes),
            max_steps=self.max_steps,
            temperature=self.temperature, top_p=self.top_p, seed=self.seed,
            logging_steps=self.logging_steps, report_to="none", disable_tqdm=not progress,
            save_strategy="steps" if self.save_steps else "no", save_steps=self.save_steps or 500,
            save_total_limit=self.save_total_limit,
            use_cpu=use_cpu, bf16=False if use_cpu else None, activation_checkpointing=False,
        )
        if "gradient_checkpointing" in self.trl:  # transformers' old name for it, which the new name would override
            del args["activation_checkpointing"]
        try:
            return GRPOConfig(**{**args, **self.trl})
        except (ValueError, TypeError) as e:  # TrainingArguments / GRPOConfig reject bad values this way
            raise LayerscoutError(f"trl: {str(e).strip().splitlines()[0]}") from None


def accumulation_steps(completions: int, micro_batch: int) -> int:
    """The fewest accumulation steps that split `completions` evenly into micro-batches of at most `micro_batch`.
    Example: accumulation_steps(32, 8) == 4; accumulation_steps(12, 8) == 2 (micro-batches of 6)."""
    return next(k for k in range(1, completions + 1) if completions % k == 0 and completions // k <= micro_batch)


def check_trl_fields(fields: dict) -> None:
    """Every key must be a GRPOConfig field that layerscout does not set itself; all problems at once."""
    import difflib

    from trl import GRPOConfig

    known = [f.name for f in dataclasses.fields(GRPOConfig)]
    problems = []
    for key in fields:
        if key in SET_BY_LAYERSCOUT:
            problems.append(f"trl.{key} is set by layerscout: use {SET_BY_LAYERSCOUT[key]}")
        elif key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            problems.append(f"trl.{key} is not a trl.GRPOConfig field{hint}")
    if problems:
        raise LayerscoutError("; ".join(problems))

"""RL runs: train only the chosen decoder blocks (or all of them) with TRL's GRPOTrainer, score the held-out
split before and after, and leave a loadable model, a layer delta and a `train_report.json` behind. The one
run path behind `layerscout train` and every row of `calibrate`. Freezing is plain `requires_grad`; the
optimizer holds only trainable tensors (checked at train start). Cost: max_steps GRPO steps plus two evals.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from .config import RLConfig
from .errors import LayerscoutError

REPORT = "train_report.json"
DELTA = "layer_delta.safetensors"
BASE_EVAL = "base_eval.json"


def train_layers(model: Any, task: Any, layers: list[int] | None, config: RLConfig | None = None,
                 output_dir: str | Path = "runs/train", resume: bool = False, progress: bool = True,
                 callbacks: list | None = None, base_eval_cache: str | Path | None = None) -> dict:
    """GRPO / Dr. GRPO on `task`, updating only decoder blocks `layers` (None = full-parameter run).

    `model`: a ModelSpec, hub id / path, None (default organism) or an in-memory (model, tokenizer) pair, which
    is trained in place. `resume=True` continues from the newest `checkpoint-*` in `output_dir`. `callbacks`
    are extra TrainerCallbacks (per-step measurements). `base_eval_cache`: where the base model's held-out score
    is cached (default `output_dir/base_eval.json`); runs that share it score the base once. Returns the run record also written to
    `output_dir/train_report.json`. Example:
    `train_layers(None, "math", [2], RLConfig(max_steps=10), "runs/l2")["final_score"]`.
    """
    from .multiturn import check_supported

    start = time.perf_counter()
    config = config or RLConfig()
    out, checkpoint = _setup_output_dir(output_dir, resume)
    task = _setup_task(task)
    model, tokenizer, base_id, in_memory = _setup_model(model, task.name)
    check_supported(task, config)
    trainable, base_state = _setup_freeze(model, layers, config)
    with _progress_bars(progress):
        base_eval = _base_eval(model, tokenizer, task, config, Path(base_eval_cache or out / BASE_EVAL))
        trainer, timer = _setup_trainer(model, tokenizer, task, config, out, trainable, in_memory, progress,
                                        callbacks or [])
        trainer.train(resume_from_checkpoint=checkpoint)
        final_eval = _evaluate(model, tokenizer, task, config)
        record = _record(model, task, layers, config, base_id, trainable, base_state, base_eval, final_eval,
                         trainer, timer, checkpoint, out, start)
        _save_outputs(model, tokenizer, layers, base_state, record, out)
    return record


# ---------------------------------------------------------------- setup

@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """Silence transformers' own bars (checkpoint and model writes) for a quiet run; restore them after."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    (logging.enable_progress_bar if enabled else logging.disable_progress_bar)()
    try:
        yield
    finally:
        (logging.enable_progress_bar if was else logging.disable_progress_bar)()


def _setup_output_dir(output_dir: str | Path, resume: bool) -> tuple[Path, str | None]:
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(output_dir)
    checkpoint = get_last_checkpoint(str(out)) if out.is_dir() else None
    if not resume and (checkpoint or (out / REPORT).exists()):
        raise LayerscoutError(f"{out} already holds a run; resume it (--resume) or pick a new output dir")
    out.mkdir(parents=True, exist_ok=True)
    return out, checkpoint if resume else None


def _setup_model(model: Any, task: str) -> tuple[Any, Any, str, bool]:
    """(model, tokenizer, base id, in_memory) from a spec, a path (None: `task`'s default organism) or an in-memory
    (model, tokenizer) pair."""
    from .models import load_model, model_name

    in_memory = isinstance(model, tuple)
    model, tokenizer = model if in_memory else load_model(model, task=task)
    if getattr(model, "hf_quantizer", None) is not None:
        raise LayerscoutError("the model is still flagged as quantized; load it through layerscout.load_model")
    return model, tokenizer, model_name(model), in_memory


def _setup_task(task: Any) -> Any:
    from .tasks import get_task

    return get_task(task) if isinstance(task, str) else task


def _setup_freeze(model, layers: list[int] | None, config: RLConfig) -> tuple[list[str], dict]:
    """Freeze all but `layers`; snapshot the trainable tensors on CPU (the delta's base fingerprint and the update
    norms). Full runs keep no snapshot: it would be a second copy of the model."""
    from .models import freeze_all_but

    trainable = list(freeze_all_but(model, layers, train_embeddings=config.train_embeddings,
                                    train_head=config.train_head))
    if not trainable:
        raise LayerscoutError("nothing to train: no parameter requires grad")
    own = dict(model.named_parameters())
    return trainable, {} if layers is None else {n: own[n].detach().to("cpu", copy=True) for n in trainable}


def _base_eval(model, tokenizer, task, config: RLConfig, cached: Path) -> dict:
    """The base model's held-out score, cached in `cached` (written atomically) so a resumed run, or every run
    of a calibration sweep, does not re-score it."""
    from .records import write_json

    settings = {"task": task.name, "task_version": task.version, "task_options": task.config,
                "n": config.eval_prompts, "seed": _eval_seed(config), "num_samples": config.eval_samples,
                "temperature": config.temperature, "max_new_tokens": config.max_completion_length}
    settings = json.loads(json.dumps(settings))
    if cached.exists() and (saved := json.loads(cached.read_text())).get("settings") == settings:
        return saved["result"]
    result = _evaluate(model, tokenizer, task, config)
    write_json(cached, {"settings": settings, "result": result})
    return result


def _evaluate(model, tokenizer, task, config: RLConfig) -> dict:
    from .evaluate import evaluate

    return evaluate(model, tokenizer, task, n=config.eval_prompts, seed=_eval_seed(config),
                    num_samples=config.eval_samples, max_new_tokens=config.max_completion_length,
                    temperature=config.temperature)


def _eval_seed(config: RLConfig) -> int:
    return config.seed if config.eval_seed is None else config.eval_seed


def _setup_trainer(model, tokenizer, task, config: RLConfig, out: Path, trainable: list[str], in_memory: bool,
                   progress: bool, callbacks: list):
    """GRPOTrainer over the task's train prompts (multi-turn tasks: MultiTurnTrainer). With beta > 0, TRL builds the
    KL reference by reloading `config._name_or_path`, so an in-memory model is first saved to out/reference."""
    from transformers import PrinterCallback

    from .multiturn import MultiTurnTrainer, is_multi_turn

    timer = step_timer()
    guard = [optimizer_guard(set(trainable)), timer, *callbacks]
    if is_multi_turn(task):
        return MultiTurnTrainer(model, tokenizer, task, config, out, guard, progress=progress), timer
    from trl import GRPOTrainer

    name_or_path = model.config._name_or_path
    if config.beta > 0 and in_memory:
        if not (out / "reference" / "config.json").exists():
            model.save_pretrained(out / "reference")
        model.config._name_or_path = str(out / "reference")
    args = config.to_grpo_config(out, progress=progress)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[task.reward], args=args,
                          train_dataset=task.load_prompts("train", config.train_prompts, config.seed),
                          callbacks=guard)
    model.config._name_or_path = name_or_path
    if not progress:
        trainer.remove_callback(PrinterCallback)  # it prints every log dict when tqdm is off
    return trainer, timer


# ---------------------------------------------------------------- callbacks (transformers imported lazily)

def step_timer():
    """A TrainerCallback whose `.seconds` lists each optimizer step's wall time (generation + backward + update)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self._t)

    return StepTimer()


def optimizer_guard(trainable: set[str]):
    """A TrainerCallback that fails the run at train start unless the optimizer holds exactly `trainable`."""
    from transformers import TrainerCallback

    class OptimizerGuard(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            names = {n for n, p in model.named_parameters() if id(p) in held}
            if names != trainable:
                extra, missing = sorted(names - trainable), sorted(trainable - names)
                raise LayerscoutError(f"optimizer/trainable mismatch: extra {extra[:3]}, missing {missing[:3]}")

    return OptimizerGuard()


# ---------------------------------------------------------------- outputs

def _relative_updates(model, layers: list[int] | None, base_state: dict) -> dict[str, float]:
    """||theta_k - theta_k0|| / ||theta_k0|| per trained block (the paper's weight-change measure)."""
    import torch

    from .models import layer_prefix

    if layers is None:
        return {}
    own = dict(model.named_parameters())
    out = {}
    for k in layers:
        names = [n for n in base_state if n.startswith(layer_prefix(model, k))]
        diff = sum(float(torch.sum((own[n].detach().cpu().float() - base_state[n].float()) ** 2)) for n in names)
        norm = sum(float(torch.sum(base_state[n].float() ** 2)) for n in names)
        out[str(k)] = (diff / norm) ** 0.5 if norm else 0.0
    return out


def _record(model, task, layers, config, base_id, trainable, base_state, base_eval, final_eval, trainer,
            timer, checkpoint, out, start) -> dict:
    import dataclasses

    from .models import num_layers
    from .records import provenance

    own = dict(model.named_parameters())
    history = trainer.state.log_history
    return {
        "kind": "full" if layers is None else "layers",
        "model": base_id, "num_layers": num_layers(model), "layers": layers,
        "trainable_params": sum(own[n].numel() for n in trainable),
        "task": task.name, "task_version": task.version,
        "algo": config.loss_type, "seed": config.seed, "steps": trainer.state.global_step,
        "base_score": base_eval["score"], "final_score": final_eval["score"],
        "base_eval": base_eval, "final_eval": final_eval,
        "relative_update": _relative_updates(model, layers, base_state),
        "reward_curve": [{"step": e["step"], "reward": e["reward"]} for e in history if "reward" in e],
        "step_seconds_median": statistics.median(timer.seconds) if timer.seconds else None,
        "wall_seconds": round(time.perf_counter() - start, 3),
        "resumed_from": checkpoint, "output_dir": str(out),
        "delta": str(out / DELTA) if layers is not None else None,
        "config": dataclasses.asdict(config), **provenance(), "log_history": history,
    }


def _save_outputs(model, tokenizer, layers, base_state, record, out: Path) -> None:
    """A transformers-loadable model + tokenizer, the layer delta (single-layer runs) and the report."""
    from .delta import save_delta
    from .records import write_json

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if layers is not None:
        keys = ("model", "layers", "algo", "steps", "seed", "task", "task_version", "base_score", "final_score")
        meta = {k: record[k] for k in keys}
        save_delta(model, list(base_state), out / DELTA, base_state=base_state,
                   metadata={"base_model": meta.pop("model"), "blocks": meta.pop("layers"),
                             "scores": {"base": meta.pop("base_score"), "final": meta.pop("final_score")}, **meta})
    write_json(out / REPORT, record)

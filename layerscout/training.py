"""RL runs: train only the chosen decoder blocks (or all of them) with TRL's GRPOTrainer, score the held-out
split before and after, and leave a loadable model, a layer delta, a model card and a `train_report.json` behind.
The one run path behind `layerscout train` and every row of `calibrate`. Freezing is plain `requires_grad`; the
optimizer holds only trainable tensors (checked at train start). A run dir remembers what it runs
(`run_config.json`), so `resume` refuses other settings, reports a finished run without touching it, and skips a
checkpoint torn by a kill during its save. Cost: max_steps GRPO steps plus two evals.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

from .config import RLConfig
from .errors import LayerscoutError

REPORT = "train_report.json"
DELTA = "layer_delta.safetensors"
BASE_EVAL = "base_eval.json"
RUN_CONFIG = "run_config.json"
CARD = "README.md"
ALGO_NAMES = {"grpo": "GRPO", "dr_grpo": "Dr. GRPO"}
log = logging.getLogger(__name__)


def train_layers(model: Any, task: Any, layers: list[int] | None, config: RLConfig | None = None,
                 output_dir: str | Path = "runs/train", resume: bool = False, progress: bool = True,
                 callbacks: list | None = None, base_eval_cache: str | Path | None = None,
                 extra_record: dict | None = None, save_model: bool = True) -> dict:
    """GRPO / Dr. GRPO on `task`, updating only decoder blocks `layers` (None = full-parameter run).

    `model`: a ModelSpec, hub id / path, None (default organism) or an in-memory (model, tokenizer) pair, which
    is trained in place. `resume=True` continues from the newest complete `checkpoint-*` in `output_dir` after
    checking that the dir holds this same run; a finished run is returned as stored (with
    `finished_before=True`) and left untouched. `callbacks` are extra TrainerCallbacks (per-step measurements).
    `base_eval_cache`: where the base model's held-out score is cached (default `output_dir/base_eval.json`);
    runs that share it score the base once. `extra_record` is merged into the record (e.g. how the blocks were
    chosen). `save_model=False` keeps only the report and the layer delta, no loadable model (short runs whose
    result is their score). Returns the run record also written to `output_dir/train_report.json`. Example:
    `train_layers(None, "math", [2], RLConfig(max_steps=10), "runs/l2")["final_score"]`.
    """
    from .models import num_parameters
    from .multiturn import check_supported

    start = time.perf_counter()
    config = config or RLConfig()
    out = check_output_dir(output_dir, resume)
    task = _setup_task(task)
    model, tokenizer, base_id, in_memory = _setup_model(model, task.name)
    check_supported(task, config)
    config = config.sized_for(num_parameters(model), processes())
    identity = run_identity(model, task, layers, config)
    finished = _check_resume(out, identity, resume)
    if finished is not None:
        return finished
    checkpoint = last_complete_checkpoint(out) if resume else None
    _write_run_config(out, identity)
    trainable, base_state = _setup_freeze(model, layers, config)
    with _progress_bars(progress):
        base_eval = _base_eval(model, tokenizer, task, config, Path(base_eval_cache or out / BASE_EVAL),
                               identity["model_fingerprint"])
        trainer, timer = _setup_trainer(model, tokenizer, task, config, out, trainable, in_memory, progress,
                                        callbacks or [])
        log.info("training %s for %d steps (%s)%s", f"blocks {layers}" if layers is not None else "all parameters",
                 config.max_steps, config.loss_type, f", resuming from {checkpoint}" if checkpoint else "")
        trainer.train(resume_from_checkpoint=checkpoint)
        final_eval = _evaluate(model, tokenizer, task, config)
        record = {**_record(model, task, layers, config, base_id, trainable, base_state, base_eval, final_eval,
                            trainer, timer, checkpoint, out, start),
                  "model_fingerprint": identity["model_fingerprint"], **(extra_record or {})}
        if is_main_process():
            _save_outputs(model, tokenizer, layers, base_state, record, out, save_model)
    return record


# ---------------------------------------------------------------- run dir: what it holds, what resumes

def check_output_dir(output_dir: str | Path, resume: bool) -> Path:
    """Before any model is loaded: the dir must be writable, and hold no run unless resuming."""
    from .records import check_writable

    out = check_writable(output_dir, kind="dir")
    holds = [name for name in (RUN_CONFIG, REPORT) if (out / name).exists()] + \
        sorted(p.name for p in out.glob("checkpoint-*"))
    if holds and not resume:
        raise LayerscoutError(f"{out} already holds a run ({holds[0]}); resume it (--resume) or pick a new "
                              "output dir")
    if resume and holds and not (out / RUN_CONFIG).exists():
        raise LayerscoutError(f"{out} holds {holds[0]} but no {RUN_CONFIG}, so what it would resume cannot be "
                              "checked (a run of an older layerscout?); pick a new output dir")
    wait_for_everyone()  # every process checks before the main one writes run_config.json
    return out


def run_identity(model, task, layers: list[int] | None, config: RLConfig) -> dict:
    """What a run is: model (name and fingerprint), blocks, task (name, version, options) and RL settings.
    A run dir keeps it in run_config.json; resuming needs the same (RESUMABLE_FIELDS may differ)."""
    from .models import model_name
    from .records import model_fingerprint

    return json.loads(json.dumps({
        "model": model_name(model), "model_fingerprint": model_fingerprint(model),
        "layers": None if layers is None else sorted(layers),
        "task": task.name, "task_version": task.version, "task_options": getattr(task, "config", {}),
        "config": config.identity(), "max_steps": config.max_steps,
    }, default=str))


def _check_resume(out: Path, identity: dict, resume: bool) -> dict | None:
    """On resume: refuse another run's dir (one line naming what differs); a finished run's stored record."""
    from .records import fingerprint_mismatch

    stored = _read_json(out / RUN_CONFIG)
    if not resume or stored is None:
        return None
    differ = [k for k in identity if k not in ("model", "model_fingerprint", "max_steps")
              and stored.get(k) != identity[k]]
    if "config" in differ:
        differ.remove("config")
        differ += sorted(k for k in set(identity["config"]) | set(stored.get("config", {}))
                         if identity["config"].get(k) != stored.get("config", {}).get(k))
    if (why := fingerprint_mismatch(stored.get("model_fingerprint"), identity["model_fingerprint"])):
        differ.insert(0, f"model ({stored.get('model')} there, {identity['model']} here: {why})")
    if differ:
        raise LayerscoutError(f"{out} holds a run with other settings: {', '.join(differ)}; resume with the same "
                              "settings or pick a new output dir")
    report = _read_json(out / REPORT)
    if report is None:
        return None
    if report.get("steps") != identity["max_steps"]:
        raise LayerscoutError(f"{out} holds a run that finished at {report.get('steps')} steps; it is left as is: "
                              f"train {identity['max_steps']} steps into a new output dir")
    log.warning("%s: this run finished before (%s steps); left untouched", out, report.get("steps"))
    return {**report, "finished_before": True}


def _write_run_config(out: Path, identity: dict) -> None:
    from .records import write_json

    if is_main_process() and _read_json(out / RUN_CONFIG) != identity:
        write_json(out / RUN_CONFIG, identity)
    wait_for_everyone()


def last_complete_checkpoint(out: str | Path) -> str | None:
    """The newest `checkpoint-N` in `out` that a kill did not tear; torn newer ones are logged and skipped."""
    import re

    found = [(int(m[1]), p) for p in Path(out).glob("checkpoint-*") if p.is_dir()
             and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        log.warning("skipping %s: %s", path, problem)
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why checkpoint dir `path` cannot be resumed, or None. TRL writes the weights, then optimizer, scheduler
    and RNG states, then trainer_state.json last, none atomically: a kill during the save leaves a file missing
    or cut short. Also refuses non-finite weights. Cost: one read of the checkpoint's weights."""
    import zipfile

    path = Path(path)
    try:
        step = json.loads((path / "trainer_state.json").read_text())["global_step"]
    except FileNotFoundError:
        return "no trainer_state.json (killed while saving?)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"trainer_state.json is unreadable ({type(e).__name__}: {e})"
    if path.name != f"checkpoint-{step}":
        return f"its trainer_state.json is for step {step}"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no model weights (*.safetensors)"
    for w in weights:
        if (problem := _safetensors_problem(w)) is not None:
            return f"{w.name}: {problem}"
    states = [path / "optimizer.pt", *path.glob("scheduler.pt")] + (sorted(path.glob("rng_state*.pth")) or
                                                                    [path / "rng_state.pth"])
    for f in states:  # scheduler.pt: TRL's only (the multi-turn trainer keeps a constant rate)
        if not f.is_file():
            return f"no {f.name} (killed while saving?)"
        if not zipfile.is_zipfile(f):  # torch.save writes a zip whose directory comes last
            return f"{f.name} is cut short (killed while saving?)"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file cut short, unreadable, or holding NaN/inf: why; else None."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if t.is_floating_point() and not torch.isfinite(t).all():
                    return f"non-finite values in {name}"
    except Exception as e:  # safetensors raises its own error types for short or corrupt files
        return f"unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------- processes (accelerate launch)

def processes() -> int:
    """Data-parallel processes of this run: WORLD_SIZE under `accelerate launch` or torchrun, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True except on the non-main processes of an `accelerate launch` run: only the main one writes files."""
    return os.environ.get("RANK", "0") == "0"


def wait_for_everyone() -> None:
    """A barrier across the processes of a multi-process launch (a no-op in one process). Starts torch.distributed
    the way accelerate would (gloo on CPU, NCCL on GPUs); the Trainer then reuses that process group."""
    if processes() == 1:
        return
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    dist.barrier(device_ids=[torch.cuda.current_device()] if cuda else None)


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


def _base_eval(model, tokenizer, task, config: RLConfig, cached: Path, fingerprint: dict) -> dict:
    """The base model's held-out score, cached in `cached` (written atomically) so a resumed run, or every run
    of a calibration sweep, does not re-score it. A cache made on another model (`fingerprint`, the base
    model's records.model_fingerprint) is refused, not reused: a sweep resumed on a model that came out
    different (an organism rebuilt on another CPU) would mix its gains with the first model's. A cache from
    before fingerprints were kept has nothing to check. Warns when a constant answer beats the base model."""
    from .evaluate import constant_warning
    from .records import fingerprint_mismatch, write_json

    settings = {"task": task.name, "task_version": task.version, "task_options": task.config,
                "n": config.eval_prompts, "seed": _eval_seed(config), "num_samples": config.eval_samples,
                "temperature": config.temperature, "max_new_tokens": config.max_completion_length}
    settings = json.loads(json.dumps(settings))
    if cached.exists() and (saved := json.loads(cached.read_text())).get("settings") == settings:
        if why := fingerprint_mismatch(saved.get("model_fingerprint"), fingerprint, missing_ok=True):
            raise LayerscoutError(f"{cached} holds the base score of another model ({why}), so runs on this one "
                                  "would not compare with the runs scored against it: use the model it was made "
                                  "on, or another output dir")
        return saved["result"]
    result = _evaluate(model, tokenizer, task, config)
    if is_main_process():
        write_json(cached, {"settings": settings, "model_fingerprint": fingerprint, "result": result})
    if warning := constant_warning(result):
        log.warning("%s: %s", task.name, warning)
    return result


def _evaluate(model, tokenizer, task, config: RLConfig) -> dict:
    from .evaluate import evaluate
    from .precision import autocast_for

    with autocast_for(model):
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
    from .precision import upcast_trainable

    timer = step_timer()
    guard = [optimizer_guard(set(trainable)), finite_guard(trainable), timer, log_metrics(), *callbacks]
    if is_multi_turn(task):
        upcast_trainable(model, autocast=False)  # its loop runs without autocast: bf16 weights are refused
        return MultiTurnTrainer(model, tokenizer, task, config, out, guard, progress=progress), timer
    from trl import GRPOTrainer

    name_or_path = model.config._name_or_path
    if config.beta > 0 and in_memory:
        if is_main_process() and not (out / "reference" / "config.json").exists():
            model.save_pretrained(out / "reference")
        wait_for_everyone()
        model.config._name_or_path = str(out / "reference")
    on_cpu = next(model.parameters()).device.type == "cpu"
    args = config.to_grpo_config(out, progress=progress, use_cpu=on_cpu, processes=processes())
    upcast_trainable(model, autocast=args.bf16 or args.fp16)
    try:
        trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[task.reward], args=args,
                              train_dataset=task.load_prompts("train", config.train_prompts, config.seed),
                              callbacks=guard)
    except (ImportError, RuntimeError) as e:  # e.g. report_to names a logger that is not installed
        raise LayerscoutError(f"cannot set up TRL's GRPOTrainer: {str(e).strip().splitlines()[0]}") from None
    finally:
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


def finite_guard(trainable: list[str]):
    """A TrainerCallback that stops the run at the first step whose update left NaN or inf in a trained tensor,
    before that step can be checkpointed; the checkpoints already written stay resumable. Cost: one pass over
    the trained tensors per step."""
    import torch
    from transformers import TrainerCallback

    names = set(trainable)

    class FiniteGuard(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            for name, p in model.named_parameters():
                if name in names and not torch.isfinite(p.detach()).all():
                    raise LayerscoutError(
                        f"step {state.global_step} left non-finite values in {name} (the update diverged: lower "
                        f"learning_rate); nothing of this step was saved, earlier checkpoints are in {args.output_dir}")

    return FiniteGuard()


def log_metrics():
    """A TrainerCallback that sends TRL's per-step log dict to the `layerscout.training` logger (DEBUG), so
    `--log-file` keeps them."""
    from transformers import TrainerCallback

    class LogMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            log.debug("step %d: %s", state.global_step, json.dumps(logs, default=str))

    return LogMetrics()


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
    from .multiturn import is_multi_turn
    from .precision import training_precision
    from .records import provenance

    own = dict(model.named_parameters())
    history = trainer.state.log_history
    return {
        "kind": "full" if layers is None else "layers",
        "model": base_id, "num_layers": num_layers(model), "layers": layers,
        "trainable_params": sum(own[n].numel() for n in trainable),
        "task": task.name, "task_version": task.version,
        "task_options": json.loads(json.dumps(getattr(task, "config", {}), default=str)),
        "algo": config.loss_type, "seed": config.seed, "steps": trainer.state.global_step,
        "precision": training_precision(model, *((False, False) if is_multi_turn(task) else
                                                 (trainer.args.bf16, trainer.args.fp16))),
        "base_score": base_eval["score"], "final_score": final_eval["score"],
        "base_eval": base_eval, "final_eval": final_eval,
        "relative_update": _relative_updates(model, layers, base_state),
        "reward_curve": [{"step": e["step"], "reward": e["reward"]} for e in history if "reward" in e],
        "step_seconds_median": statistics.median(timer.seconds) if timer.seconds else None,
        "wall_seconds": round(time.perf_counter() - start, 3),
        "resumed_from": checkpoint, "output_dir": str(out), "processes": processes(),
        "delta": str(out / DELTA) if layers is not None else None,
        "config": dataclasses.asdict(config), **provenance(), "log_history": history,
    }


def _save_outputs(model, tokenizer, layers, base_state, record, out: Path, save_model: bool = True) -> None:
    """A transformers-loadable model + tokenizer, the layer delta (single-layer runs), a model card and the report.
    If the dir cannot be written any more, the report and the delta (or, for a full run, the model) go to a
    rescue dir that the error names."""
    from .records import rescue_path

    try:
        _write_outputs(model, tokenizer, layers, base_state, record, out, with_model=save_model)
    except OSError as e:
        rescue = rescue_path(out.name)
        _write_outputs(model, tokenizer, layers, base_state, {**record, "output_dir": str(rescue)}, rescue,
                       with_model=save_model and layers is None)
        raise LayerscoutError(f"could not write the results to {out} ({e.strerror or e}); they were saved to "
                              f"{rescue}") from None


def _write_outputs(model, tokenizer, layers, base_state, record, out: Path, with_model: bool) -> None:
    from .delta import save_delta
    from .records import write_json

    out.mkdir(parents=True, exist_ok=True)
    if with_model:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        model_card(record).save(out / CARD)
    if layers is not None:
        keys = ("model", "layers", "algo", "steps", "seed", "task", "task_version", "base_score", "final_score")
        meta = {k: record[k] for k in keys}
        save_delta(model, list(base_state), out / DELTA, base_state=base_state,
                   metadata={"base_model": meta.pop("model"), "blocks": meta.pop("layers"),
                             "scores": {"base": meta.pop("base_score"), "final": meta.pop("final_score")}, **meta})
    write_json(out / REPORT, record)


def model_card(record: dict):
    """A Hugging Face model card (huggingface_hub.ModelCard) naming the base model, the trained blocks, the
    algorithm and the held-out scores. TRL's own card names the base only for hub ids ("fine-tuned version of
    None" for a local model)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = record["model"]
    hub_id = base if not Path(base).exists() and "/" in base and not base.startswith((".", "/")) else None
    blocks = "all parameters" if record["layers"] is None else \
        f"decoder block{'s' if len(record['layers']) > 1 else ''} {', '.join(map(str, record['layers']))} only"
    delta = "" if record["layers"] is None else \
        f" The trained blocks alone are in `{DELTA}`: `layerscout apply BASE {DELTA} --output DIR` rebuilds this model."
    data = ModelCardData(base_model=hub_id, library_name="transformers",
                         tags=["layerscout", "trl", record["algo"].replace("_", "-"), "reinforcement-learning"])
    text = f"""---
{data.to_yaml()}
---

# {Path(record["output_dir"]).name}

This model is **{base}** with {blocks} trained by {ALGO_NAMES.get(record["algo"], record["algo"])}
reinforcement learning (TRL's GRPOTrainer, through layerscout) for {record["steps"]} steps on the
`{record["task"]}` task (version {record["task_version"]}), seed {record["seed"]}. Every other parameter is the
base model's, bit for bit.

| | held-out score |
|---|---|
| base model | {record["base_score"]:.4f} |
| after training | {record["final_score"]:.4f} |

Scored on {record["final_eval"]["n"]} held-out prompts. The run's settings, versions and reward curve are in
`{REPORT}`.{delta}
"""
    return ModelCard(text)

"""Delta grafting: each decoder block's share of a real RL update, scored with forward passes only. With Δ_k =
θ_run,k − θ_base,k, block k's graft gain is S(base + Δ_k) − S(base) and its knock-out loss is S(run) − S(run − Δ_k).
S is the held-out expected reward, estimated from one fixed set of base-policy rollouts by self-normalised importance
sampling (snis_reward): sample once, then every grafted model costs one forward over those rollouts. A graft swaps
only block k's tensors in place and puts them back. Cost: one rollout round on held-out prompts, then 2L + 2 forwards
over it (as a probe pass, plus one short full-parameter GRPO run)."""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import LayerscoutError
from .models import layer_parameters, model_name, num_layers
from .precision import fp32_compute
from .rollouts import Rollouts, collect_rollouts, sequence_logps


def snis_reward(logw, rewards, group_size: int) -> float:
    """Self-normalised importance-sampling estimate of E_π'[r] from samples of π: per prompt group of `group_size`
    consecutive rows, Σ_i w_i r_i / Σ_i w_i with w_i = exp(logw_i), logw_i = log π'(y_i|x_i) − log π(y_i|x_i); then
    the mean over groups. logw, rewards: (N,), N = groups · group_size. A shift of one group's logw cancels.
    Example: snis_reward([0, log 3], [1, 0], 2) == 0.25."""
    logw = np.asarray(logw, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    if logw.shape != rewards.shape or logw.ndim != 1 or logw.size % group_size:
        raise ValueError(f"need equal (N,) log-weights and rewards with N a multiple of {group_size}; got "
                         f"{logw.shape} and {rewards.shape}")
    logw, rewards = logw.reshape(-1, group_size), rewards.reshape(-1, group_size)
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    return float(((w * rewards).sum(axis=1) / w.sum(axis=1)).mean())


@dataclass
class GraftResult:
    """(L,) arrays in reward units, plus the SNIS scores of the base and the run on the same rollouts."""

    graft_gain: np.ndarray     # S(base + Δ_k) − S(base)
    knockout_loss: np.ndarray  # S(run) − S(run − Δ_k)
    base_score: float
    run_score: float


def check_same_architecture(base, run, run_name: str) -> None:
    """`run` must be an RL result of `base`: same depth, architecture and parameter names and shapes."""
    def arch(m):
        return (getattr(m.config, "architectures", None) or [type(m).__name__])[0]

    if num_layers(run) != num_layers(base) or arch(run) != arch(base):
        raise LayerscoutError(f"{run_name} is not an RL result of this model: it has {num_layers(run)} decoder "
                              f"layers ({arch(run)}), the model {num_layers(base)} ({arch(base)})")
    own = {n: p.shape for n, p in base.named_parameters()}
    other = {n: p.shape for n, p in run.named_parameters()}
    if own != other:
        name = next(n for n in sorted(set(own) | set(other)) if own.get(n) != other.get(n))
        raise LayerscoutError(f"{run_name} is not an RL result of this model: parameter {name} has shape "
                              f"{tuple(other.get(name, ()))} there, {tuple(own.get(name, ()))} here")


def graft_blocks(base, run, rollouts: Rollouts, *, temperature: float = 1.0, batch_size: int = 8, cost=None,
                 progress: bool = False) -> GraftResult:
    """Graft gain and knock-out loss of every block of `run` (an RL result of `base`) on `rollouts` sampled from
    `base`. Forwards run in fp32 (the gains of a short run sit near bf16's resolution). Both models are left as they
    came. `cost` (passes.Cost) counts the forward tokens."""
    from tqdm.auto import tqdm

    rewards = rollouts.rewards.numpy()
    tokens = int(rollouts.attention_mask.sum())

    def logp(model) -> torch.Tensor:
        if cost is not None:
            cost.forward(tokens)
        return sequence_logps(model, rollouts.input_ids, rollouts.attention_mask, rollouts.completion_mask,
                              temperature=temperature, precision=fp32, batch_size=batch_size).double().sum(dim=1)

    def score(model) -> float:
        return snis_reward((logp(model) - ref).numpy(), rewards, rollouts.group_size)

    n = num_layers(base)
    gain, loss = np.zeros(n), np.zeros(n)
    with torch.no_grad(), fp32_compute(base) as fp32, fp32_compute(run):
        ref = logp(base)
        s_base, s_run = snis_reward(np.zeros(len(rewards)), rewards, rollouts.group_size), score(run)
        for k in tqdm(range(n), desc="grafting", disable=not progress, leave=False):
            base_k, run_k = [p for _, p in layer_parameters(base, k)], [p for _, p in layer_parameters(run, k)]
            with _swapped(base_k, run_k):
                gain[k] = score(base) - s_base
            with _swapped(run_k, base_k):
                loss[k] = s_run - score(run)
    return GraftResult(gain, loss, s_base, s_run)


class _swapped:
    """Copy `source`'s tensors into `target` for the duration; `target`'s own values are restored exactly."""

    def __init__(self, target: list[torch.nn.Parameter], source: list[torch.nn.Parameter]):
        self.target, self.source = target, source

    def __enter__(self):
        self.saved = [p.detach().clone() for p in self.target]
        for p, s in zip(self.target, self.source):
            p.copy_(s)

    def __exit__(self, *exc):
        for p, s in zip(self.target, self.saved):
            p.copy_(s)


def heldout_rollouts(model, tokenizer, task, config, precision=None) -> Rollouts:
    """Base-policy rollouts on `config.graft_prompts` held-out prompts (the task's "heldout" split), seeded by
    `config.seed` without touching the global RNG."""
    dataset = task.load_prompts("heldout", config.graft_prompts, config.seed)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(config.seed)
        return collect_rollouts(model, tokenizer, task, dataset, num_generations=config.num_generations,
                                max_completion_length=config.max_completion_length, temperature=config.temperature,
                                top_p=config.top_p, loss_type=config.loss_type,
                                batch_size=max(config.batch_size, 8), precision=precision)


def short_run(model, tokenizer, task, config, progress: bool = False):
    """A copy of `model` after `config.graft_steps` full-parameter GRPO steps (training.train_layers, layers=None)
    on the task's train prompts. train_layers' own before/after evaluations are cut to 8 prompts: grafting scores
    the run itself. Returns the trained copy, frozen and in eval mode."""
    from .config import RLConfig
    from .training import train_layers

    rl = RLConfig(loss_type=config.loss_type, learning_rate=config.graft_learning_rate, max_steps=config.graft_steps,
                  num_generations=config.num_generations, max_completion_length=config.max_completion_length,
                  temperature=config.temperature, top_p=config.top_p, seed=config.seed, save_steps=0, eval_prompts=8)
    run = _plain_copy(model)
    with tempfile.TemporaryDirectory(prefix="layerscout-graft-") as out:
        train_layers((run, tokenizer), task, None, rl, output_dir=out, progress=progress, save_model=False)
    for p in run.parameters():
        p.requires_grad_(False)
    return run.eval()


def _plain_copy(model):
    """A deep copy of `model` without an instance-level forward patch (an active logprobs.fused_head: its closure
    would still call the original model's forward)."""
    patched = vars(model).pop("forward", None)
    try:
        return copy.deepcopy(model)
    finally:
        if patched is not None:
            model.forward = patched


def rank_from_run(run_dir: str, model: str | None, task: str = "math", *, overrides: list[str] = (),
                  seed: int | None = None, device: str = "auto", dtype: str = "auto", progress: bool = True):
    """Rank MODEL's blocks by delta grafting from `run_dir`, a full-parameter RL result of MODEL that loads with
    transformers (e.g. `layerscout train --full --output DIR`). Sampling settings come from the recipe (`task`).
    Score = the mean of graft gain and knock-out loss (reward units). The ranking records the run and the cost.

    >>> rank_from_run("runs/full", None, "math").top(3)   # doctest: +SKIP
    """
    from .config import ModelSpec
    from .models import load_model
    from .passes import Cost
    from .precision import model_precision
    from .ranking import build_ranking
    from .records import model_fingerprint, portable_path, provenance
    from .recipes import build_task, load_recipe

    start = time.perf_counter()
    if not (Path(run_dir) / "config.json").is_file():
        raise LayerscoutError(f"--from-run {run_dir}: not a transformers model dir (no config.json)")
    recipe = load_recipe(task, list(overrides) + ([f"seed={seed}"] if seed is not None else []))
    config, task_obj = recipe.probe, build_task(recipe)
    base, tokenizer = load_model(ModelSpec(name_or_path=model, device=device, dtype=dtype), task=recipe.task)
    run, _ = load_model(ModelSpec(name_or_path=str(run_dir), device=device, dtype=dtype))
    check_same_architecture(base, run, str(run_dir))
    precision = model_precision(base, dtype)
    rollouts = heldout_rollouts(base, tokenizer, task_obj, config, precision)
    cost = Cost(int(rollouts.attention_mask.sum()))
    cost.forward(cost.rollout_tokens)  # the forward that recorded the rollouts' old log-probs
    result = graft_blocks(base, run, rollouts, temperature=config.temperature, batch_size=config.batch_size,
                          cost=cost, progress=progress)
    if not (result.graft_gain.any() or result.knockout_loss.any()):
        raise LayerscoutError(f"{run_dir} scores exactly as the model on every graft: it holds no update of "
                              "its decoder blocks")
    values = {"graft_gain": result.graft_gain, "knockout_loss": result.knockout_loss}
    report = Path(run_dir) / "train_report.json"
    trained = {}
    if report.is_file():
        import json

        rec = json.loads(report.read_text())
        trained = {k: rec.get(k) for k in ("model", "kind", "algo", "steps", "seed", "base_score", "final_score")}
    ranking = build_ranking(
        values, (result.graft_gain + result.knockout_loss) / 2, model=model_name(base), task=task_obj.name,
        algo=trained.get("algo") or config.loss_type, seed=config.seed,
        cost=cost.as_dict(time.perf_counter() - start, rollouts.generated_tokens),
        rollouts={"prompts": rollouts.num_groups, "num_generations": rollouts.group_size, "split": "heldout",
                  "mean_reward": float(rollouts.rewards.mean()),
                  "informative_groups": len(rollouts.informative_groups())},
        config={**vars(config), "task_version": task_obj.version, "precision": precision.as_record(),
                "recipe": recipe.name, "recipe_version": recipe.version,
                "scoring": {"rule": "graft", "score": "(graft_gain + knockout_loss) / 2"},
                "from_run": {"path": portable_path(run_dir), "model_fingerprint": model_fingerprint(run),
                             "snis_base_score": result.base_score, "snis_run_score": result.run_score,
                             "train_report": trained or None}},
        provenance=provenance(), model_fingerprint=model_fingerprint(base))
    return ranking

"""The short RL probe behind `layerscout rank`, as four phases: (1) rollouts: one round of sampled, scored
completions; (2) passes: the model passes the requested signals need (passes.py), each run once, freeing what
later passes do not need; (3) signals: pure reductions of the pass results to one value per block; (4) ranking.
Each phase records its peak memory. Cost is counted in rollout-batch equivalents: one `forward_backward_passes`
unit is a forward+backward over every rollout token, about what one GRPO step spends after generation."""

from __future__ import annotations

import dataclasses
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch

from .config import ProbeConfig
from .errors import LayerscoutError
from .logprobs import fused_head
from .memory import MemoryMeter
from .models import model_name, num_parameters
from .passes import PASSES, PassContext, plan_passes, run_passes
from .precision import Precision, model_precision
from .predictor import load_predictor
from .ranking import LayerRanking, build_ranking, combine_signals
from .records import model_fingerprint, provenance
from .rollouts import Rollouts, pack_rollouts
from .sampling import Selection, prompting, select_prompts
from .signals import get_signal

# Under this share of prompt groups with differing rewards, the ranking rests on a handful of prompts: warn.
FEW_INFORMATIVE = 0.25


def run_probe(model, tokenizer, task, config: ProbeConfig | None = None, progress: bool = True,
              precision: Precision | None = None) -> LayerRanking:
    """Probe `model` on `task` and rank its decoder blocks. `precision` defaults to the model's own policy
    (precision.model_precision); it is recorded in the ranking's config.

    >>> ranking = run_probe(*load_model(None), get_task("math"))   # doctest: +SKIP
    >>> ranking.top(3)                                              # doctest: +SKIP
    """
    from .multiturn import check_algo, is_multi_turn

    config = config or ProbeConfig()
    predictor = load_predictor(config.predictor)
    signals = [get_signal(name) for name in config.signal_names()]
    check_algo(task, config.loss_type)
    passes = plan_passes([n for s in signals for n in s.needs])
    old_logps = any(PASSES[p].old_logps for p in passes)
    precision = precision or model_precision(model)
    config = dataclasses.replace(config, gradient_checkpointing=config.checkpointing_for(num_parameters(model)))
    meter = MemoryMeter(next(model.parameters()).device)
    start = time.perf_counter()
    torch.manual_seed(config.seed)

    with meter.phase("rollouts"):
        if is_multi_turn(task):
            config = dataclasses.replace(config, max_completion_length=prompting(config, tokenizer, task)[1])
            rollouts = _episode_rollouts(model, tokenizer, task, config, precision, progress)
            selection = Selection.of_all(rollouts, config.max_completion_length)
        else:
            task, groups, selection = select_prompts(model, tokenizer, task, config, precision, progress)
            config = dataclasses.replace(config, max_completion_length=selection.max_completion_length)
            rollouts = pack_rollouts(model, tokenizer, groups, temperature=config.temperature,
                                     loss_type=config.loss_type, batch_size=max(config.batch_size, 8),
                                     precision=precision, old_logps=old_logps)
            del groups
    check_signal(rollouts, lookahead="lookahead_gain" in (s.name for s in signals))

    with _probe_mode(model), fused_head(model, config.temperature):
        ctx = PassContext(model, rollouts, config, precision,
                          *split_groups(rollouts, config.lookahead_fraction, config.seed), progress=progress,
                          task=task, tokenizer=tokenizer)
        if rollouts.old_logps is not None:
            ctx.cost.forward(ctx.cost.rollout_tokens)  # the forward that recorded the old log-probs
        results = run_passes(ctx, passes, meter)

    with meter.phase("signals"):
        values = {s.name: np.asarray(s.fn(**{n: results[n] for n in s.needs}), dtype=float) for s in signals}
        del results

    if predictor is not None:
        scores, scoring = predictor.predict(values), predictor.describe()
    else:
        scores, scoring = combine_signals(values, config.score_weights), {"rule": "score_weights",
                                                                           "weights": config.score_weights}
    return build_ranking(
        values, scores, model=model_name(model), task=task.name, algo=config.loss_type,
        seed=config.seed,
        cost={**ctx.cost.as_dict(time.perf_counter() - start, selection.generated_tokens),
              "passes": ctx.cost.by_pass, "signals": ctx.cost.of_signals(signals),
              "peak_memory_mib": meter.peaks, "memory_measure": meter.kind},
        rollouts={"prompts": rollouts.num_groups, "num_generations": rollouts.group_size,
                  "mean_reward": float(rollouts.rewards.mean()),
                  "informative_groups": len(rollouts.informative_groups()),
                  "probe_groups": ctx.probe_groups, "heldout_groups": ctx.heldout_groups,
                  **selection.as_dict(rollouts.num_groups, len(rollouts.informative_groups()))},
        config={**vars(config), "task_version": task.version, "precision": precision.as_record(), "scoring": scoring},
        provenance=provenance(), model_fingerprint=model_fingerprint(model))


def _episode_rollouts(model, tokenizer, task, config: ProbeConfig, precision: Precision, progress: bool) -> Rollouts:
    """A multi-turn task's rollouts: the step samples of played games with GiGPO advantages, one group per game
    (multiturn.StepRollouts: groups differ in rows). No ladder or dynamic sampling: every game is played."""
    from .multiturn import episode_rollouts

    dataset = task.load_prompts("train", config.num_prompts, config.seed)
    return episode_rollouts(model, tokenizer, task, list(dataset["answer"]), num_generations=config.num_generations,
                            max_completion_length=config.max_completion_length, temperature=config.temperature,
                            top_p=config.top_p, loss_type=config.loss_type, precision=precision,
                            batch_size=max(config.batch_size, config.num_prompts * config.num_generations))


@contextmanager
def _probe_mode(model):
    """No parameter requires grad (persample.py computes block gradients from hooks) and no dropout (signals must be
    deterministic for a seed); every flag and the train/eval mode are restored on exit."""
    flags = {p: p.requires_grad for p in model.parameters()}
    training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(training)


def split_groups(rollouts: Rollouts, heldout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of prompt groups into (probe, held-out), spreading the informative groups over both."""
    rng = np.random.default_rng(seed)
    info = rollouts.informative_groups()
    rest = [m for m in range(rollouts.num_groups) if m not in info]
    probe, held = [], []
    for groups in (info, rest):
        groups = list(rng.permutation(groups))
        n_held = int(round(len(groups) * heldout_fraction))
        if len(groups) >= 2:
            n_held = min(max(n_held, 1), len(groups) - 1)
        held += [int(g) for g in groups[:n_held]]
        probe += [int(g) for g in groups[n_held:]]
    return sorted(probe), sorted(held)


def check_signal(rollouts: Rollouts, lookahead: bool = False) -> None:
    """Refuse to rank from rollouts that carry no policy gradient (or, for the lookahead, fewer than two informative
    groups), and say what to change."""
    info = rollouts.informative_groups()
    mean = float(rollouts.rewards.mean())
    if not info:
        hint = ("the model never succeeds: use easier prompts, a longer max_completion_length or a stronger model"
                if mean <= rollouts.rewards.min() else
                "the model always succeeds: use harder prompts" if mean >= rollouts.rewards.max() else
                "raise num_generations or temperature")
        raise LayerscoutError(
            f"no signal: every one of the {rollouts.num_groups} prompt groups got identical rewards "
            f"(mean reward {mean:.2f}), so every advantage is 0; {hint}, or raise num_prompts/num_generations")
    if len(info) < FEW_INFORMATIVE * rollouts.num_groups:
        warnings.warn(f"only {len(info)} of {rollouts.num_groups} prompt groups got differing rewards (mean reward "
                      f"{mean:.2f}): the ranking rests on those few; raise num_prompts or num_generations",
                      stacklevel=3)
    if lookahead and len(info) < 2:
        raise LayerscoutError(
            f"only {len(info)} of {rollouts.num_groups} prompt groups got differing rewards (mean reward "
            f"{mean:.2f}); the lookahead needs one to step on and one to score: raise num_prompts or num_generations")


def is_hub_id(model: str | None) -> bool:
    """A hub model id ("Qwen/Qwen3-4B"): not the default organism, not a local dir or file."""
    from pathlib import Path

    return model is not None and not Path(model).exists() and not model.endswith(".gguf")


def rank_layers(model: str | None = None, task: str = "math", *, overrides: list[str] = (), seed: int | None = None,
                device: str = "auto", dtype: str = "auto", progress: bool = True) -> LayerRanking:
    """Load a model (hub id, local dir, .gguf; None = the default organism), probe it with a recipe (a built-in
    task name such as "math", or a YAML path) and return its LayerRanking — what `layerscout rank` prints.

    >>> rank_layers(None, "math").top(3)   # doctest: +SKIP
    """
    from .config import ModelSpec
    from .models import load_model
    from .recipes import build_task, load_recipe
    from .tasks import task_class

    recipe = load_recipe(task, list(overrides) + ([f"seed={seed}"] if seed is not None else []))
    if is_hub_id(model) and "hub" in task_class(recipe.task).options:
        recipe.task_options.setdefault("hub", True)  # hub rungs (GSM8K, MATH-500) for a model from the hub
    task_obj = build_task(recipe)
    model_obj, tokenizer = load_model(ModelSpec(name_or_path=model, device=device, dtype=dtype), task=recipe.task)
    ranking = run_probe(model_obj, tokenizer, task_obj, recipe.probe, progress=progress,
                        precision=model_precision(model_obj, dtype))
    ranking.config["recipe_version"] = recipe.version
    ranking.config["recipe"] = recipe.name
    return ranking

"""The short RL probe behind `layerscout rank`: sample one round of rollouts, split the prompt groups into a
probe half and a held-out half, compute every requested per-block signal from them and combine the signals
into a ranking. Cost is counted in rollout-batch equivalents: one `forward_backward_passes` unit is a
forward+backward over every rollout token, about what one GRPO step spends after generation."""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from functools import cached_property

import numpy as np
import torch

from .config import ProbeConfig
from .errors import LayerscoutError
from .models import decoder_layers, model_name
from .ranking import LayerRanking, build_ranking
from .records import model_fingerprint, provenance
from .rollouts import Rollouts, collect_rollouts, sequence_weights, surrogate_objective, token_logps
from .signals import get_signal

# Under this share of prompt groups with differing rewards, the ranking rests on a handful of prompts: warn.
FEW_INFORMATIVE = 0.25


class Cost:
    """Tokens pushed through forward-only and forward+backward passes, plus generated tokens."""

    def __init__(self, rollout_tokens: int):
        self.rollout_tokens = max(1, rollout_tokens)
        self.fwd_tokens = self.bwd_tokens = self.backward_calls = 0

    def forward(self, tokens: int) -> None:
        self.fwd_tokens += tokens

    def backward(self, calls: int, tokens: int) -> None:
        self.backward_calls += calls
        self.bwd_tokens += tokens

    def as_dict(self, seconds: float, generated: int) -> dict:
        return {"seconds": round(seconds, 3), "generated_tokens": generated,
                "forward_backward_passes": round(self.bwd_tokens / self.rollout_tokens, 2),
                "forward_passes": round(self.fwd_tokens / self.rollout_tokens, 2),
                "backward_calls": self.backward_calls}


class ProbeState:
    """What the signals share: model, rollouts, the probe/held-out split and cached passes."""

    def __init__(self, model, rollouts: Rollouts, config: ProbeConfig, bar=None):
        self.model, self.rollouts, self.config, self.bar = model, rollouts, config, bar
        self.device = next(model.parameters()).device
        self.blocks = decoder_layers(model)
        self.n_layers = len(self.blocks)
        self.block_params = [list(b.parameters()) for b in self.blocks]
        self.probe_groups, self.heldout_groups = split_groups(rollouts, config.lookahead_fraction, config.seed)
        self.weights = self._weights(rollouts)
        self.heldout = rollouts.select_groups(self.heldout_groups)
        self.heldout_weights = self._weights(self.heldout)
        self.cost = Cost(int(rollouts.attention_mask.sum()))
        self._recorded: dict[int, list] = {}

    def _weights(self, ro: Rollouts) -> torch.Tensor:
        return sequence_weights(ro.advantages, ro.completion_mask, self.config.loss_type,
                                self.config.max_completion_length)

    @cached_property
    def gradients(self):
        from .signals.gradients import gradient_pass
        return gradient_pass(self)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def _logps(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device), use_cache=False)
        return token_logps(out.logits, ids.to(self.device))

    def sequence_logp(self, i: int) -> torch.Tensor:
        """Σ_t log p(y_it | x_i, y_i<t) of sequence i, run unpadded (batch of one)."""
        ro = self.rollouts
        keep = ro.attention_mask[i].bool()
        ids, cmask = ro.input_ids[i][keep][None], ro.completion_mask[i][keep][None]
        return (self._logps(ids, torch.ones_like(ids)) * cmask.to(self.device)).sum()

    def _batches(self, ro: Rollouts):
        bs = self.config.batch_size
        for s in range(0, ro.input_ids.shape[0], bs):
            yield slice(s, s + bs)

    def objective_backward(self) -> None:
        """Backward of the clipped GRPO loss −J over all rollouts, in micro-batches."""
        ro = self.rollouts
        for sl in self._batches(ro):
            logps = self._logps(ro.input_ids[sl], ro.attention_mask[sl])
            loss = -surrogate_objective(logps, ro.old_logps[sl].to(self.device), ro.completion_mask[sl].to(self.device),
                                        self.weights[sl].to(self.device), clip_eps=0.2)
            loss.backward()
            self.cost.backward(1, int(ro.attention_mask[sl].sum()))

    def heldout_objective(self, from_block: int = 0) -> float:
        """Unclipped importance-weighted advantage on the held-out groups at the current weights.

        With from_block=k, blocks below k replay the outputs recorded by the last from_block=0 call instead
        of recomputing them: exact when only blocks >= k changed since, and it halves the lookahead's cost.
        """
        ro, total = self.heldout, 0.0
        frac = (self.n_layers - from_block) / self.n_layers
        with torch.no_grad():
            for b, sl in enumerate(self._batches(ro)):
                if from_block == 0:
                    with _record_outputs(self.blocks) as outputs:
                        logps = self._logps(ro.input_ids[sl], ro.attention_mask[sl])
                    self._recorded[b] = outputs
                else:
                    with _replay_outputs(self.blocks, self._recorded[b], from_block):
                        logps = self._logps(ro.input_ids[sl], ro.attention_mask[sl])
                total += float(surrogate_objective(logps, ro.old_logps[sl].to(self.device),
                                                   ro.completion_mask[sl].to(self.device),
                                                   self.heldout_weights[sl].to(self.device)))
                self.cost.forward(int(frac * ro.attention_mask[sl].sum()))
        return total


class _Replay(torch.nn.Module):
    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


@contextmanager
def _record_outputs(blocks):
    outputs: list = [None] * len(blocks)
    hooks = [b.register_forward_hook(lambda mod, args, out, k=k: outputs.__setitem__(k, out))
             for k, b in enumerate(blocks)]
    try:
        yield outputs
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def _replay_outputs(blocks, outputs, upto: int):
    """Swap blocks 0..upto-1 for stand-ins that return their recorded outputs."""
    saved = [blocks[j] for j in range(upto)]
    for j in range(upto):
        blocks[j] = _Replay(outputs[j])
    try:
        yield
    finally:
        for j, block in enumerate(saved):
            blocks[j] = block


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


def check_signal(rollouts: Rollouts, config: ProbeConfig) -> None:
    """Refuse to rank from rollouts that carry no policy gradient, and say what to change."""
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
    if "lookahead_gain" in config.signals and len(info) < 2:
        raise LayerscoutError(
            f"only {len(info)} of {rollouts.num_groups} prompt groups got differing rewards (mean reward "
            f"{mean:.2f}); the lookahead needs one to step on and one to score: raise num_prompts or num_generations")


def run_probe(model, tokenizer, task, config: ProbeConfig | None = None, progress: bool = True) -> LayerRanking:
    """Probe `model` on `task` and rank its decoder blocks.

    >>> ranking = run_probe(*load_model(None), get_task("math"))   # doctest: +SKIP
    >>> ranking.top(3)                                              # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from .multiturn import check_algo, episode_rollouts, is_multi_turn

    config = config or ProbeConfig()
    signals = [get_signal(name) for name in config.signals]  # unknown names fail before any work
    check_algo(task, config.loss_type)
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    dataset = task.load_prompts("train", config.num_prompts, config.seed)
    with tqdm(total=len(dataset), desc="rollouts", unit="prompt", disable=not progress) as bar:
        if is_multi_turn(task):  # agent: step samples of played games, GiGPO advantages, group = game (multiturn.py)
            rollouts = episode_rollouts(model, tokenizer, task, list(dataset["answer"]),
                                        num_generations=config.num_generations,
                                        max_completion_length=config.max_completion_length,
                                        temperature=config.temperature, top_p=config.top_p,
                                        loss_type=config.loss_type,
                                        batch_size=max(config.batch_size, config.num_prompts * config.num_generations))
            bar.update(len(dataset))
        else:
            rollouts = collect_rollouts(model, tokenizer, task, dataset, num_generations=config.num_generations,
                                        max_completion_length=config.max_completion_length,
                                        temperature=config.temperature, top_p=config.top_p,
                                        loss_type=config.loss_type, batch_size=max(config.batch_size, 8),
                                        progress=bar.update)
    check_signal(rollouts, config)
    with _trainable_blocks(model), tqdm(total=_ticks(model, rollouts, config), desc="signals",
                                        disable=not progress) as bar:
        state = ProbeState(model, rollouts, config, bar)
        state.cost.forward(state.cost.rollout_tokens)  # the forward that recorded old_logps
        values = {}
        for sig in signals:
            bar.set_postfix_str(sig.name)
            values[sig.name] = np.asarray(sig.fn(state), dtype=float)
    return build_ranking(
        values, config.score_weights, model=model_name(model), task=task.name, algo=config.loss_type,
        seed=config.seed, cost=state.cost.as_dict(time.perf_counter() - start, rollouts.generated_tokens),
        rollouts={"prompts": rollouts.num_groups, "num_generations": rollouts.group_size,
                  "mean_reward": float(rollouts.rewards.mean()),
                  "informative_groups": len(rollouts.informative_groups()),
                  "probe_groups": state.probe_groups, "heldout_groups": state.heldout_groups},
        config={**vars(config), "task_version": task.version}, provenance=provenance(),
        model_fingerprint=model_fingerprint(model))


def _ticks(model, rollouts: Rollouts, config: ProbeConfig) -> int:
    n_layers, names = len(decoder_layers(model)), set(config.signals)
    per = {"lookahead_gain": n_layers, "spectral_snr": n_layers, "update_norm": config.update_steps,
           "attribution": math.ceil(rollouts.input_ids.shape[0] / config.batch_size)}
    needs_grad = names & {"grad_norm", "grad_norm_per_param", "grad_norm_rel", "fisher_trace", "grad_snr",
                          "update_norm", "lookahead_gain"}
    return (rollouts.num_groups if needs_grad else 0) + sum(v for k, v in per.items() if k in names)


class _trainable_blocks:
    """Only block parameters need .grad during the probe (gradients still flow through everything);
    restores every requires_grad flag and the train/eval mode on exit."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.flags = {p: p.requires_grad for p in self.model.parameters()}
        self.training = self.model.training
        block_params = {p for b in decoder_layers(self.model) for p in b.parameters()}
        for p in self.model.parameters():
            p.requires_grad_(p in block_params)
        self.model.eval()  # no dropout: signals must be deterministic for a seed
        return self

    def __exit__(self, *exc):
        for p, flag in self.flags.items():
            p.requires_grad_(flag)
        self.model.train(self.training)
        return False


def rank_layers(model: str | None = None, task: str = "math", *, overrides: list[str] = (), seed: int | None = None,
                device: str = "auto", dtype: str = "auto", progress: bool = True) -> LayerRanking:
    """Load a model (hub id, local dir, .gguf; None = the default organism), probe it with a recipe (a built-in
    task name such as "math", or a YAML path) and return its LayerRanking — what `layerscout rank` prints.

    >>> rank_layers(None, "math").top(3)   # doctest: +SKIP
    """
    from .config import ModelSpec
    from .models import load_model
    from .recipes import build_task, load_recipe

    recipe = load_recipe(task, list(overrides) + ([f"seed={seed}"] if seed is not None else []))
    task_obj = build_task(recipe)
    model_obj, tokenizer = load_model(ModelSpec(name_or_path=model, device=device, dtype=dtype), task=recipe.task)
    ranking = run_probe(model_obj, tokenizer, task_obj, recipe.probe, progress=progress)
    ranking.config["recipe_version"] = recipe.version
    ranking.config["recipe"] = recipe.name
    return ranking

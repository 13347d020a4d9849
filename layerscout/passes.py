"""The probe's engine: the passes over the model that signals share. A pass is a function of a PassContext (model,
rollouts, probe/held-out split, precision) and of earlier passes' results; a signal (signals/) declares the passes
it needs and reduces their results to one value per block. `run_passes` runs each needed pass once, in registration
order, releases a result's large tensors as soon as no later pass needs them, and records every pass's peak memory.
Cost is counted in rollout-batch equivalents: one forward+backward unit is a backward over every rollout token.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from .errors import LayerscoutError
from .grpo import sequence_weights
from .logprobs import completion_logps
from .memory import trim_heap
from .models import decoder_layers


@dataclass(frozen=True)
class Pass:
    name: str
    fn: Callable[..., Any]
    help: str
    needs: tuple[str, ...] = ()
    covers: tuple[str, ...] = ()  # cheaper passes whose result this one's contains: planned together, it runs alone
    old_logps: bool = False  # reads the rollouts' old log-probs (the probe records them only when a pass does)


PASSES: dict[str, Pass] = {}


def register_pass(name: str, help: str, needs: Sequence[str] = (), covers: Sequence[str] = (),
                  old_logps: bool = False):
    """Decorator: `@register_pass("update_steps", "...", needs=("policy_grad",)) def f(ctx, policy_grad): ...`.
    Passes run in the order they are registered, so a pass may only need (or cover) passes registered before it."""
    def deco(fn):
        unknown = [n for n in (*needs, *covers) if n not in PASSES]
        if unknown:
            raise ValueError(f"pass {name!r} needs or covers {unknown}, not registered before it")
        PASSES[name] = Pass(name, fn, help, tuple(needs), tuple(covers), old_logps)
        return fn
    return deco


def plan_passes(needs: Sequence[str]) -> list[str]:
    """Every pass the given needs require (their own needs included), in execution order, less those a planned
    pass covers (its result stands in for theirs)."""
    wanted: set[str] = set()
    stack = list(needs)
    while stack:
        name = stack.pop()
        if name not in PASSES:
            raise LayerscoutError(f"a signal needs the unknown pass {name!r}; passes: {', '.join(PASSES)}")
        if name not in wanted:
            wanted.add(name)
            stack += PASSES[name].needs
    covered = {c for name in wanted for c in PASSES[name].covers}
    return [name for name in PASSES if name in wanted and name not in covered]


class Cost:
    """Tokens pushed through forward-only and forward+backward passes, plus backward calls; passes that sample or
    train on their own (delta grafting) add their generated tokens and RL steps."""

    def __init__(self, rollout_tokens: int):
        self.rollout_tokens = max(1, rollout_tokens)
        self.fwd_tokens = self.bwd_tokens = self.backward_calls = self.generated = self.rl_steps = 0
        self.by_pass: dict[str, dict] = {}

    def _units(self) -> dict:
        return {"forward_backward_passes": self.bwd_tokens / self.rollout_tokens,
                "forward_passes": self.fwd_tokens / self.rollout_tokens, "rl_steps": self.rl_steps}

    @contextmanager
    def measure(self, name: str):
        """Record what the enclosed pass spent (seconds and units) under by_pass[name]."""
        before, start = self._units(), time.perf_counter()
        try:
            yield
        finally:
            after = self._units()
            self.by_pass[name] = {"seconds": round(time.perf_counter() - start, 3),
                                  **{k: round(after[k] - before[k], 2) for k in after}}

    def of_signals(self, signals) -> dict:
        """Each signal's cost: the passes it needs (a covered pass counts as the pass that covered it), shared
        passes counted whole for every signal that needs them. {signal name: {"passes": [...], seconds, units}}."""
        covered_by = {c: name for name in self.by_pass for c in PASSES[name].covers}
        out = {}
        for sig in signals:
            names = list(dict.fromkeys(covered_by.get(n, n) for n in plan_passes(sig.needs)))
            costs = [self.by_pass[n] for n in names if n in self.by_pass]
            out[sig.name] = {"passes": names, **{k: round(sum(c[k] for c in costs), 3)
                                                  for k in ("seconds", "forward_backward_passes", "forward_passes",
                                                            "rl_steps")}}
        return out

    def forward(self, tokens: int) -> None:
        self.fwd_tokens += tokens

    def backward(self, calls: int, tokens: int) -> None:
        self.backward_calls += calls
        self.bwd_tokens += tokens

    def as_dict(self, seconds: float, generated: int) -> dict:
        return {"seconds": round(seconds, 3), "generated_tokens": generated + self.generated,
                "rl_steps": self.rl_steps,
                "forward_backward_passes": round(self.bwd_tokens / self.rollout_tokens, 2),
                "forward_passes": round(self.fwd_tokens / self.rollout_tokens, 2),
                "backward_calls": self.backward_calls}


@dataclass
class PassContext:
    """What every pass reads: the model (in the probe's eval mode, fused TRL log-prob head active), its blocks,
    the rollouts and their probe / held-out split (prompt-group ids), sequence weights c_i, precision, cost; the task
    and tokenizer for passes that sample or train themselves."""

    model: Any
    rollouts: Any
    config: Any  # ProbeConfig
    precision: Any  # Precision
    probe_groups: list[int]
    heldout_groups: list[int]
    progress: bool = False
    task: Any = None
    tokenizer: Any = None
    planned: Sequence[str] | None = None  # the passes run_passes will run (None: any), so a pass keeps only what they need
    cost: Cost = field(init=False)

    def __post_init__(self) -> None:
        self.blocks = decoder_layers(self.model)
        self.n_layers = len(self.blocks)
        self.device = next(self.model.parameters()).device
        self.weights = self.sequence_weights(self.rollouts)
        self.heldout = self.rollouts.select_groups(self.heldout_groups)
        self.heldout_weights = self.sequence_weights(self.heldout)
        self.cost = Cost(int(self.rollouts.attention_mask.sum()))

    def sequence_weights(self, ro) -> torch.Tensor:
        return sequence_weights(ro.advantages, ro.completion_mask, self.config.loss_type,
                                self.config.max_completion_length)

    def logps(self, ro, rows, precision=None) -> torch.Tensor:
        """Completion log-probs (B, T) of rows `rows` of `ro`, under the precision policy's autocast (or
        `precision`'s). Without autocast's cache: in the passes that backpropagate into the block weights, it would
        hold a bf16 copy of them all through the forward, which gradient checkpointing otherwise spares (each weight
        is used once per forward, so the cache saves no cast; signals are bit-identical)."""
        with (precision or self.precision).autocast(cache=False):
            return completion_logps(self.model, ro.input_ids[rows].to(self.device),
                                    ro.attention_mask[rows].to(self.device), ro.completion_mask[rows].to(self.device))

    def rows_per_batch(self, ro) -> int:
        """Sequences per micro-batch of `ro`: `config.batch_size`, fewer where `config.batch_tokens` binds (at
        least 1)."""
        bs, budget = self.config.batch_size, getattr(self.config, "batch_tokens", None)
        return bs if budget is None else max(1, min(bs, budget // max(1, ro.input_ids.shape[1])))

    def batches(self, ro) -> list[slice]:
        """Micro-batches of `rows_per_batch(ro)` sequences, in order."""
        bs = self.rows_per_batch(ro)
        return [slice(s, s + bs) for s in range(0, ro.input_ids.shape[0], bs)]

    def group_batches(self, groups: Sequence[int]) -> list[tuple[torch.Tensor, list[tuple[int, slice]]]]:
        """Micro-batches of whole prompt groups of `self.rollouts`, in order: groups join a batch while it stays
        within `rows_per_batch` rows (a larger group is a batch of its own). Groups may differ in rows (a
        multi-turn game has one row per step). Returns (row indices, [(group id, rows of that group within the
        batch)])."""
        group, bs = self.rollouts.group, self.rows_per_batch(self.rollouts)
        out, rows, spans, n = [], [], [], 0
        for m in groups:
            own = torch.nonzero(group == m).flatten()
            if spans and n + len(own) > bs:
                out.append((torch.cat(rows), spans))
                rows, spans, n = [], [], 0
            rows.append(own)
            spans.append((m, slice(n, n + len(own))))
            n += len(own)
        if spans:
            out.append((torch.cat(rows), spans))
        return out

    def bar(self, items, desc: str) -> Iterator:
        """`items` with a progress bar. On CPU, the heap is trimmed after each item: glibc otherwise keeps a
        micro-batch's freed activations, fragmented, and a SmolLM2 sweep's resident set grows from 3.0 to 3.8 GB."""
        from tqdm.auto import tqdm

        for item in tqdm(items, desc=desc, disable=not self.progress, leave=False):
            yield item
            if self.device.type == "cpu":
                trim_heap()


def run_passes(ctx: PassContext, names: Sequence[str], meter) -> dict[str, Any]:
    """Run `names` (from plan_passes) in order; each pass gets the results it needs as keyword arguments. After
    each pass, results no later pass needs are `release()`d (their large tensors dropped; small arrays kept)."""
    results: dict[str, Any] = {}
    ctx.planned = list(names)
    for i, name in enumerate(names):
        p = PASSES[name]
        with meter.phase(name), ctx.cost.measure(name):
            results[name] = p.fn(ctx, **{n: results[n] for n in p.needs})
        results.update(dict.fromkeys(p.covers, results[name]))
        still_needed = {id(results[n]) for later in names[i + 1:] for n in PASSES[later].needs}
        for result in results.values():
            if id(result) not in still_needed and hasattr(result, "release"):
                result.release()
    return results


@contextmanager
def block_params_require_grad(blocks):
    """The blocks' parameters require grad, for torch.autograd.grad (the probe turns every flag off), then not."""
    params = [p for b in blocks for p in b.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield params
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@contextmanager
def checkpointed(blocks, enabled: bool = True, reentrant: bool = True):
    """Gradient checkpointing of every block for the probe's backwards (transformers' own checkpointing only runs in
    train mode; the probe runs in eval mode). Reentrant for persample.BlockGradients: its first forward runs without
    grad, so the hooks keep nothing until the recompute. Non-reentrant where torch.autograd.grad is used (captum)."""
    if not enabled:
        yield
        return
    from torch.utils.checkpoint import checkpoint

    saved = [vars(block).get("forward") for block in blocks]
    for block in blocks:
        def forward(hidden_states, *args, _forward=block.forward, **kwargs):
            if not torch.is_grad_enabled() or not hidden_states.requires_grad:
                return _forward(hidden_states, *args, **kwargs)
            if not reentrant:
                return checkpoint(_forward, hidden_states, *args, use_reentrant=False, **kwargs)
            return checkpoint(lambda h: _forward(h, *args, **kwargs), hidden_states, use_reentrant=True)
        block.forward = forward
    try:
        yield
    finally:
        for block, own in zip(blocks, saved):
            if own is None:
                del block.forward
            else:
                block.forward = own

"""Signals that move the weights, then put them back exactly.

update_norm: ||θ_k^(s) − θ_k^(0)|| / ||θ_k^(0)|| after s Adam steps of the clipped GRPO objective on the same
rollouts (GRPO's μ > 1 reuse). Adam's first step is lr·sign(g) for every entry, so after one step this is flat across
blocks by construction; steps 2..s let it differ. The steps are taken on fp32 master copies (the weights themselves
when they are fp32); θ^(0), the Adam moments and any master copy live in host memory. lookahead_gain: the held-out
groups' surrogate J_h = Σ_i c_i Σ_t exp(logp − logp_old) after one Adam-like step lr·sign(g_k) on block k alone (g_k
from the probe groups), minus J_h before, both computed in fp32 whatever the precision policy: in bf16 the forward's
rounding swamps a gain of that size (Spearman 0.57-0.64 against fp32 across an 8-layer organism's blocks). Cost: (s−1)
forward+backward sweeps; about n_layers/2 + 2 forwards of the held-out half (block k's forward starts from block k's
recorded input).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from ..grpo import surrogate_objective
from ..passes import checkpointed, register_pass
from ..persample import BlockGradients
from ..precision import fp32_compute
from . import register_signal
from .gradients import GradientSweep, block_sq_norms

CLIP_EPS = 0.2  # TRL's epsilon
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
ADAM_EPS = 1e-8


def adam_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int,
              lr: float, betas: tuple[float, float] = ADAM_BETAS, eps: float = ADAM_EPS) -> None:
    """One torch.optim.Adam step (no weight decay, no amsgrad; step counts from 1), in place, as torch's
    single-tensor implementation writes it."""
    b1, b2 = betas
    exp_avg.lerp_(grad, 1 - b1)
    exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - b2 ** step)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - b1 ** step))


def _host_copy(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A copy in host memory (pinned when the tensor lives on a GPU, for fast transfers back)."""
    out = torch.empty(t.shape, dtype=dtype or t.dtype, pin_memory=t.is_cuda)
    out.copy_(t)
    return out


@register_pass("update_steps", "relative weight change of each block after update_steps Adam steps",
               needs=("policy_grad",), old_logps=True)
def update_steps(ctx, policy_grad: GradientSweep) -> np.ndarray:
    """Step 1 uses the sweep's ∇J (its fp32 buffers then hold each later step's gradient); steps 2..s backpropagate
    the clipped surrogate. Per parameter, the host-side state (θ0, m, v, fp32 master when the weights are lower
    precision) visits the device only for its own update."""
    cfg, ro = ctx.config, ctx.rollouts
    params = [p for b in ctx.blocks for p in b.parameters()]
    grads, policy_grad.total = policy_grad.total, None  # this pass owns the fp32 buffers now
    start = {p: _host_copy(p.detach()) for p in params}
    master = {p: _host_copy(p.detach(), torch.float32) for p in params if p.dtype != torch.float32}
    moments = {p: (torch.zeros(p.shape, pin_memory=p.is_cuda), torch.zeros(p.shape, pin_memory=p.is_cuda))
               for p in params}
    try:
        for step in ctx.bar(range(1, cfg.update_steps + 1), "update steps"):
            if step == 1:
                for g in grads.values():
                    g.neg_()  # the loss is −J
            else:
                with BlockGradients(ctx.blocks, grads=grads) as bg, \
                        checkpointed(ctx.blocks, cfg.gradient_checkpointing):
                    bg.zero_()
                    for sl in ctx.bar(ctx.batches(ro), f"update step {step}"):
                        loss = -surrogate_objective(ctx.logps(ro, sl), ro.old_logps[sl].to(ctx.device),
                                                    ro.completion_mask[sl].to(ctx.device),
                                                    ctx.weights[sl].to(ctx.device), clip_eps=CLIP_EPS)
                        bg.backward(loss)
                        ctx.cost.backward(1, int(ro.attention_mask[sl].sum()))
            with torch.no_grad():
                for p in params:
                    _adam_update(p, grads[p], moments[p], master.get(p), step, cfg.learning_rate)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)  # the state's copies back to host memory, once per step
        del grads
        with torch.no_grad():
            delta = {p: (master[p] if p in master else p.detach()).to(ctx.device) - start[p].to(ctx.device).float()
                     for p in params}
            sq_delta = block_sq_norms(delta, ctx.blocks).cpu().numpy()
            del delta
            sq_base = block_sq_norms({p: start[p] for p in params}, ctx.blocks).numpy()
    finally:
        with torch.no_grad():
            for p in params:
                p.copy_(start[p])
    return np.sqrt(sq_delta) / np.maximum(np.sqrt(sq_base), 1e-12)


def _adam_update(p, grad, moments, master, step: int, lr: float) -> None:
    """Bring one parameter's state to the device, take the Adam step in fp32, write weights and state back
    (asynchronously into pinned host memory: the caller synchronises once per step)."""
    m, v = (t.to(p.device, non_blocking=True) for t in moments)
    w = p.data if master is None else master.to(p.device, non_blocking=True)
    adam_step(w, grad, m, v, step, lr)
    if master is not None:
        p.copy_(w)
        master.copy_(w, non_blocking=True)
    for host, dev in zip(moments, (m, v)):
        if host is not dev:
            host.copy_(dev, non_blocking=True)


@dataclass
class _Batch:
    """One held-out micro-batch during the lookahead: `out` is block k-1's output (None before block 0),
    `calls[k]` block k's call (positional args and kwargs without the hidden states)."""

    rows: slice
    out: object = None
    calls: list | None = None


@register_pass("lookahead", "held-out surrogate gain after one lr·sign(g) step on each block alone",
               needs=("policy_grad",), old_logps=True)
def lookahead(ctx, policy_grad: GradientSweep) -> np.ndarray:
    """J_h before; then per block k: step block k, J_h from block k's recorded input, undo the step, and advance every
    batch's recorded input by running the unchanged block k (one block forward: exact, and it keeps one hidden state
    per batch instead of every block's)."""
    sign, lr, ro = policy_grad.probe_sign, ctx.config.lookahead_lr, ctx.heldout
    batches = [_Batch(sl) for sl in ctx.batches(ro)]
    with torch.no_grad(), fp32_compute(ctx.model) as fp32:
        before = torch.zeros((), dtype=torch.float64, device=ctx.device)
        for b in batches:
            with _record_calls(ctx.blocks) as calls:
                before += _heldout_objective(ctx, b.rows, fp32)
            b.calls = calls
            ctx.cost.forward(int(ro.attention_mask[b.rows].sum()))
        gains = torch.zeros(ctx.n_layers, dtype=torch.float64, device=ctx.device)
        for k, block in enumerate(ctx.bar(ctx.blocks, "lookahead")):
            saved = [p.detach().clone() for p in block.parameters()]
            for p in block.parameters():
                p.add_(sign[p], alpha=lr)
            try:
                for b in batches:
                    with _replay(ctx.blocks, k, b.out):
                        gains[k] += _heldout_objective(ctx, b.rows, fp32)
                    ctx.cost.forward(int((ctx.n_layers - k) / ctx.n_layers * ro.attention_mask[b.rows].sum()))
            finally:
                for p, s in zip(block.parameters(), saved):
                    p.copy_(s)
            for b in batches:
                hidden = b.calls[0][2] if b.out is None else _hidden(b.out)
                b.out = _call_block(block, b.calls[k], hidden)
    return (gains - before).cpu().numpy()


def _heldout_objective(ctx, rows, precision) -> torch.Tensor:
    """The held-out surrogate of rows `rows`, a 0-d fp64 tensor on the device (no host sync)."""
    ro = ctx.heldout
    logps = ctx.logps(ro, rows, precision)
    return surrogate_objective(logps, ro.old_logps[rows].to(ctx.device), ro.completion_mask[rows].to(ctx.device),
                               ctx.heldout_weights[rows].to(ctx.device)).double()


@contextmanager
def _record_calls(blocks):
    """Record each block's call: (args without hidden states, kwargs without them, block 0's hidden-state input)."""
    calls: list = [None] * len(blocks)

    def pre(k, module, args, kwargs):
        if args:
            hidden, rest = args[0], (None, *args[1:])
        else:
            hidden, rest = kwargs["hidden_states"], None
        kept = {n: v for n, v in kwargs.items() if n != "hidden_states"}
        calls[k] = (rest, kept, hidden if k == 0 else None)

    hooks = [b.register_forward_pre_hook(lambda m, a, kw, k=k: pre(k, m, a, kw), with_kwargs=True)
             for k, b in enumerate(blocks)]
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


def _call_block(block, call, hidden):
    """Run `block` as recorded in `call`, with `hidden` as its hidden states."""
    args, kwargs, _ = call
    if args is None:
        return block(**kwargs, hidden_states=hidden)
    return block(hidden, *args[1:], **kwargs)


def _hidden(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class _Replay(torch.nn.Module):
    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


@contextmanager
def _replay(blocks, upto: int, output):
    """Blocks 0..upto-1 become stand-ins returning `output` (block upto-1's recorded output), so the model's
    forward starts at block `upto`."""
    saved = [blocks[j] for j in range(upto)]
    for j in range(upto):
        blocks[j] = _Replay(output)
    try:
        yield
    finally:
        for j, block in enumerate(saved):
            blocks[j] = block


@register_signal("update_norm", "relative weight change of block k after `update_steps` full-model Adam steps",
                 needs=("update_steps",))
def update_norm(update_steps: np.ndarray) -> np.ndarray:
    return update_steps


@register_signal("lookahead_gain", "held-out surrogate gain after one lr·sign(g) step on block k alone",
                 needs=("lookahead",))
def lookahead_gain(lookahead: np.ndarray) -> np.ndarray:
    return lookahead

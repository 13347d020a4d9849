"""Decoder-block gradients from one ordinary backward, without parameter gradients and without per-sample
gradient copies. Hooks on every module of the blocks that owns parameters turn (input a, output gradient g) into
  - Σ_b s_b ∇_p ℓ_b per parameter p, accumulated in fp32 (ℓ_b: sequence b's term of the loss, s_b a per-sequence
    scale such as GRPO's sequence weight c_b);
  - Σ_b ||∇_k ℓ_b||² per block k (per-sample squared norms: the empirical Fisher trace), if asked;
  - ||Σ_{b∈m} s_b ∇_k ℓ_b||² per block k and prompt group m (group-to-group gradient noise), if asked.
For a Linear layer ∇W_b = Σ_t g_bt a_btᵀ, whose squared norm is Σ_{t,s} (a_bt·a_bs)(g_bt·g_bs) (the ghost norm of
Goodfellow 2015 / Li et al. 2022), used when that is cheaper than forming ∇W_b (T·(d_in + d_out) < d_in·d_out),
else ∇W_b is formed one sequence at a time. Other parameter owners (norm weights) get per-sample gradients from
torch.func.vmap(vjp), cheap for vectors. No parameter requires grad: autograd computes activation gradients
only, and the hooks do the weight-gradient maths once. Cost: the weight-gradient FLOPs of a normal backward, plus
B·T²·(d_in + d_out) per Linear where ghost norms are used; no host sync until the caller reads a result.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import torch

from .errors import LayerscoutError


def linear_sample_sq_norms(a: torch.Tensor, g: torch.Tensor, ghost: bool | None = None) -> torch.Tensor:
    """||Σ_t g_bt a_btᵀ||²_F for each sample b: a (B, T, I) layer inputs, g (B, T, O) output gradients -> (B,).
    `ghost=None` picks the cheaper exact method (ghost Gram matrices vs forming each sample's gradient).

    >>> a, g = torch.ones(1, 2, 1), torch.ones(1, 2, 1)   # ∇W = 1·1 + 1·1 = 2, squared 4
    >>> linear_sample_sq_norms(a, g).tolist()
    [4.0]
    """
    _, t, i = a.shape
    o = g.shape[-1]
    if ghost is None:
        ghost = t * (i + o) < i * o
    if ghost:
        return ((a @ a.transpose(1, 2)) * (g @ g.transpose(1, 2))).sum(dim=(1, 2))
    return torch.stack([(gb.T @ ab).square().sum() for ab, gb in zip(a, g)])


def _is_linear(module: torch.nn.Module) -> bool:
    """nn.Linear (y = a Wᵀ + b) or transformers' Conv1D (GPT-2: y = a W + b)."""
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


class BlockGradients:
    """Context manager that hooks `blocks`; inside it, `backward(loss, scale, groups)` accumulates into
    `grads` ({param: fp32 tensor}), `sample_sq` (L,) and `group_sq` (num_groups, L). Example::

        with BlockGradients(blocks, num_groups=M, per_sample=True) as bg:
            bg.backward(logps.sum(), scale=c, groups=[(0, slice(0, 4)), (1, slice(4, 8))])
        fisher = bg.sample_sq / N
    """

    def __init__(self, blocks: Sequence[torch.nn.Module], num_groups: int = 0, per_sample: bool = False,
                 grads: dict | None = None):
        self.blocks = list(blocks)
        self.per_sample = per_sample
        self.params = [p for b in self.blocks for p in b.parameters()]
        device = self.params[0].device
        # reuse caller buffers (e.g. a finished sweep's) instead of allocating a second fp32 copy
        self.grads = grads if grads is not None else {p: torch.zeros_like(p, dtype=torch.float32) for p in self.params}
        self.sample_sq = torch.zeros(len(self.blocks), dtype=torch.float64, device=device)
        self.group_sq = torch.zeros(num_groups, len(self.blocks), dtype=torch.float64, device=device)
        self._owners = [(k, m) for k, b in enumerate(self.blocks) for m in b.modules()
                        if any(True for _ in m.parameters(recurse=False))]
        self._hooks: list = []
        self._scale: torch.Tensor | None = None
        self._groups: list[tuple[int, slice]] | None = None
        self._busy = False

    def __enter__(self) -> "BlockGradients":
        self._hooks.append(self.blocks[0].register_forward_pre_hook(input_requires_grad, with_kwargs=True))
        for k, module in self._owners:
            self._hooks.append(module.register_forward_hook(partial(self._on_forward, k), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        return False

    def zero_(self) -> None:
        for g in self.grads.values():
            g.zero_()

    def backward(self, loss: torch.Tensor, scale: torch.Tensor | None = None,
                 groups: list[tuple[int, slice]] | None = None) -> None:
        """Backpropagate `loss` = Σ_b ℓ_b over a batch of B sequences. scale (B,): s_b (default 1); groups: the
        batch's prompt groups as (group id, row slice), each group wholly inside this batch."""
        self._scale, self._groups = scale, groups
        try:
            loss.backward()
        finally:
            self._scale = self._groups = None

    # ------------------------------------------------------------ hooks

    def _on_forward(self, k: int, module, args, kwargs, out) -> None:
        if self._busy or not torch.is_grad_enabled() or not isinstance(out, torch.Tensor) or not out.requires_grad:
            return  # no-grad forwards, the first pass of a reentrant checkpoint and our own vjp keep nothing
        if _is_linear(module):
            out.register_hook(partial(self._linear_grad, k, module, args[0]))
        elif len(args) == 1 and not kwargs:
            out.register_hook(partial(self._generic_grad, k, module, args[0]))
        else:
            raise LayerscoutError(f"block {k}: cannot take per-sample gradients of {type(module).__name__} "
                                  f"(it owns parameters and is not called with a single tensor)")

    def _rows(self, batch: int):
        """(group id or None, rows, scale of those rows) for each group of the current batch."""
        scale = self._scale
        if self._groups is None:
            yield None, slice(0, batch), scale
        else:
            for m, rows in self._groups:
                yield m, rows, None if scale is None else scale[rows]

    def _linear_grad(self, k: int, module, a: torch.Tensor, g: torch.Tensor) -> None:
        a = a.detach().float().reshape(a.shape[0], -1, a.shape[-1])
        g = g.float().reshape(g.shape[0], -1, g.shape[-1])
        weight, bias = module.weight, getattr(module, "bias", None)
        transposed = not isinstance(module, torch.nn.Linear)  # Conv1D stores W as (in, out)
        for m, rows, s in self._rows(a.shape[0]):
            gs = g[rows] if s is None else g[rows] * s[:, None, None]
            gw = torch.einsum("bto,bti->oi", gs, a[rows])
            sq = gw.square().sum()
            self.grads[weight].add_(gw.T if transposed else gw)
            if bias is not None:
                gb = gs.sum(dim=(0, 1))
                sq = sq + gb.square().sum()
                self.grads[bias].add_(gb)
            if m is not None:
                self.group_sq[m, k] += sq
        if self.per_sample:
            sq = linear_sample_sq_norms(a, g)
            if bias is not None:
                sq = sq + g.sum(dim=1).square().sum(dim=1)
            self.sample_sq[k] += sq.sum()

    def _generic_grad(self, k: int, module, x: torch.Tensor, g: torch.Tensor) -> None:
        """Per-sample gradients of a small module's own parameters: vmap over the batch of vjp(module)."""
        from torch.func import functional_call, vjp, vmap

        params = {n: p.detach() for n, p in module.named_parameters(recurse=False)}

        def one(xb, gb):
            out, pull = vjp(lambda ps: functional_call(module, ps, (xb[None],)), params)
            return pull(gb[None].to(out.dtype))[0]

        self._busy = True
        try:
            per = vmap(one)(x.detach(), g)  # name -> (B, *shape)
        finally:
            self._busy = False
        own = dict(module.named_parameters(recurse=False))
        for m, rows, s in self._rows(x.shape[0]):
            sq = 0.0
            for name, ps in per.items():
                ps = ps[rows].float()
                total = (ps if s is None else ps * s.reshape(-1, *[1] * (ps.dim() - 1))).sum(dim=0)
                self.grads[own[name]].add_(total)
                sq = sq + total.square().sum()
            if m is not None:
                self.group_sq[m, k] += sq
        if self.per_sample:
            self.sample_sq[k] += sum(ps.float().flatten(1).square().sum() for ps in per.values())


def input_requires_grad(module, args, kwargs):
    """Forward pre-hook on the first block: its hidden-state input becomes a leaf that requires grad, so the
    backward reaches every block although no parameter requires grad."""
    if not torch.is_grad_enabled():
        return None
    if args:
        return (args[0].detach().requires_grad_(), *args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_()}
    raise LayerscoutError(f"cannot find the hidden states among the inputs of {type(module).__name__}")

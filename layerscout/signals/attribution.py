"""captum attribution of the advantage-weighted log-likelihood F_i = c_i Σ_t log p(y_it) to each block's
output: LayerGradientXActivation (h · ∂F/∂h) on every block in one forward+backward; the block's score is
the mean over sequences of Σ |h · ∂F/∂h| over positions and hidden units. Source: captum; Shrikumar et al.
2016. Cost: one forward+backward sweep over the rollouts (captum hooks all blocks at once).
"""

from __future__ import annotations

import numpy as np
import torch

from ..logprobs import completion_logps
from ..passes import checkpointed, register_pass
from ..persample import input_requires_grad
from . import register_signal


@register_pass("attribution", "captum gradient×activation mass at each block's output", needs=())
def attribution_pass(ctx) -> np.ndarray:
    from captum.attr import LayerGradientXActivation

    ro, model = ctx.rollouts, ctx.model

    def forward(input_ids, attention_mask, completion_mask, w):
        with ctx.precision.autocast():
            logp = completion_logps(model, input_ids, attention_mask, completion_mask)
        return logp.sum(dim=1) * w

    lgxa = LayerGradientXActivation(forward, list(ctx.blocks))
    mass = torch.zeros(ctx.n_layers, dtype=torch.float64, device=ctx.device)
    hook = ctx.blocks[0].register_forward_pre_hook(input_requires_grad, with_kwargs=True)
    try:
        with checkpointed(ctx.blocks, ctx.config.gradient_checkpointing, reentrant=False):
            for sl in ctx.bar(ctx.batches(ro), "attribution"):
                args = (ro.attention_mask[sl].to(ctx.device), ro.completion_mask[sl].to(ctx.device),
                        (ctx.weights[sl] * ro.input_ids.shape[0]).to(ctx.device, torch.float32))
                attrs = lgxa.attribute(ro.input_ids[sl].to(ctx.device), additional_forward_args=args)
                for k, a in enumerate(attrs):
                    a = a[0] if isinstance(a, (tuple, list)) else a
                    mass[k] += a.detach().double().abs().sum()
                ctx.cost.backward(1, int(ro.attention_mask[sl].sum()))
    finally:
        hook.remove()
    return mass.cpu().numpy() / ro.input_ids.shape[0]


@register_signal("attribution", "captum gradient×activation of the advantage-weighted log-prob at block k's output",
                 needs=("attribution",))
def attribution(attribution: np.ndarray) -> np.ndarray:
    return attribution


@register_pass("own_attribution", "gradient × each block's own update of the residual stream (output − input)",
               needs=())
def own_attribution_pass(ctx) -> np.ndarray:
    """Σ |(h_out − h_in) · ∂F/∂h_out| per block, mean over sequences. At the block's output the residual stream
    carries every block below it, so output attribution grows with depth; the block's own write (h_out − h_in) does
    not. Hooks keep each block's input and output; one torch.autograd.grad per micro-batch gives ∂F/∂h_out."""
    ro = ctx.rollouts
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(module, args, kwargs, output):
        h_in = args[0] if args else kwargs["hidden_states"]
        seen.append((h_in, output[0] if isinstance(output, (tuple, list)) else output))

    hooks = [ctx.blocks[0].register_forward_pre_hook(input_requires_grad, with_kwargs=True)]
    hooks += [b.register_forward_hook(keep, with_kwargs=True) for b in ctx.blocks]
    mass = torch.zeros(ctx.n_layers, dtype=torch.float64, device=ctx.device)
    try:
        with checkpointed(ctx.blocks, ctx.config.gradient_checkpointing, reentrant=False):
            for sl in ctx.bar(ctx.batches(ro), "own attribution"):
                seen.clear()
                w = (ctx.weights[sl] * ro.input_ids.shape[0]).to(ctx.device, torch.float32)
                objective = (ctx.logps(ro, sl).sum(dim=1) * w).sum()
                grads = torch.autograd.grad(objective, [out for _, out in seen])
                for k, ((h_in, h_out), g) in enumerate(zip(seen, grads)):
                    mass[k] += ((h_out - h_in).detach().double() * g.double()).abs().sum()
                ctx.cost.backward(1, int(ro.attention_mask[sl].sum()))
    finally:
        seen.clear()
        for h in hooks:
            h.remove()
    return mass.cpu().numpy() / ro.input_ids.shape[0]


@register_signal("own_attribution", "gradient × block k's own write to the residual stream (output − input): "
                 "attribution of the block itself, not of everything below it", needs=("own_attribution",))
def own_attribution(own_attribution: np.ndarray) -> np.ndarray:
    return own_attribution

"""captum attribution of the advantage-weighted log-likelihood F_i = c_i Σ_t log p(y_it) to each block's
output: LayerGradientXActivation (h · ∂F/∂h) on every block in one forward+backward; the block's score is
the mean over sequences of Σ |h · ∂F/∂h| over positions and hidden units. Source: captum; Shrikumar et al.
2016. Cost: one forward+backward sweep over the rollouts (captum hooks all blocks at once).
"""

from __future__ import annotations

import numpy as np
import torch

from . import register_signal


@register_signal("attribution", "captum gradient×activation of the advantage-weighted log-prob at block k's output")
def attribution(state) -> np.ndarray:
    from captum.attr import LayerGradientXActivation

    ro, model = state.rollouts, state.model
    weights = state.weights

    def forward(input_ids, attention_mask, completion_mask, w):
        from ..rollouts import token_logps
        logp = token_logps(model(input_ids=input_ids, attention_mask=attention_mask).logits, input_ids)
        return (logp * completion_mask).sum(dim=1) * w

    lgxa = LayerGradientXActivation(forward, list(state.blocks))
    mass = np.zeros(state.n_layers)
    bs = state.config.batch_size
    for s in range(0, ro.input_ids.shape[0], bs):
        sl = slice(s, s + bs)
        args = (ro.attention_mask[sl].to(state.device), ro.completion_mask[sl].to(state.device),
                (weights[sl] * ro.input_ids.shape[0]).to(state.device))
        attrs = lgxa.attribute(ro.input_ids[sl].to(state.device), additional_forward_args=args)
        for k, a in enumerate(attrs):
            a = a[0] if isinstance(a, (tuple, list)) else a
            mass[k] += float(a.detach().float().abs().sum())
        state.cost.backward(1, int(ro.attention_mask[sl].sum()))
        state.tick()
    return mass / ro.input_ids.shape[0]

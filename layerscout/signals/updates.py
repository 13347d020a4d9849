"""Signals that move the weights, then put them back.

update_norm: ||θ_k^(s) − θ_k^(0)|| / ||θ_k^(0)|| after s Adam steps of the clipped GRPO objective on the same
rollouts (GRPO's μ > 1 reuse). Adam's first step is lr·sign(g) for every entry, so after one step this is
flat across blocks by construction; steps 2..s let it differ. lookahead_gain: the held-out groups' surrogate
J_h = Σ_i c_i Σ_t exp(logp − logp_old) after one Adam-like step lr·sign(g_k) on block k alone (g_k from the
probe groups), minus J_h before. Cost: (s−1) forward+backward sweeps; about n_layers/2 + 1 forwards of the held-out half
(blocks below k replay recorded outputs).
"""

from __future__ import annotations

import numpy as np
import torch

from . import register_signal
from .gradients import layer_sq_norms

CLIP_EPS = 0.2  # TRL's epsilon


@register_signal("update_norm", "relative weight change of block k after `update_steps` full-model Adam steps")
def update_norm(state) -> np.ndarray:
    cfg, params = state.config, state.block_params
    flat = [p for ps in params for p in ps]
    start = {p: p.detach().clone() for p in flat}
    total = state.gradients.total
    opt = torch.optim.Adam(flat, lr=cfg.learning_rate)
    try:
        for step in range(cfg.update_steps):
            opt.zero_grad(set_to_none=True)
            if step == 0:  # at θ_0 the clipped objective's gradient is ∇J, already computed
                for p in flat:
                    p.grad = (-total[p]).to(p.dtype)
            else:
                state.objective_backward()
            opt.step()
            state.tick()
        delta = layer_sq_norms([[p.detach() - start[p] for p in ps] for ps in params])
        base = layer_sq_norms([[start[p] for p in ps] for ps in params])
    finally:
        with torch.no_grad():
            for p in flat:
                p.copy_(start[p])
                p.grad = None
    return np.sqrt(delta) / np.maximum(np.sqrt(base), 1e-12)


@register_signal("lookahead_gain", "held-out surrogate gain after one lr·sign(g) step on block k alone")
def lookahead_gain(state) -> np.ndarray:
    probe_grad, lr = state.gradients.probe, state.config.lookahead_lr
    before = state.heldout_objective()
    gains = np.zeros(state.n_layers)
    for k, ps in enumerate(state.block_params):
        saved = [p.detach().clone() for p in ps]
        with torch.no_grad():
            for p in ps:
                p.add_(torch.sign(probe_grad[p]).to(p.dtype), alpha=lr)
        try:
            gains[k] = state.heldout_objective(from_block=k) - before
        finally:
            with torch.no_grad():
                for p, s in zip(ps, saved):
                    p.copy_(s)
        state.tick()
    return gains

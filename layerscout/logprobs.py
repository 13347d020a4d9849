"""Per-token log-probabilities of sampled completions, computed as TRL's GRPOTrainer computes them: logits divided
by the sampling temperature, through TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`), which projects
hidden states through the head in tiles and never materialises the (B, T, V) logits or their log-softmax. Only
completion tokens are labelled (on CUDA only they are projected; on CPU TRL projects every position and zeroes the
rest). Cost: one forward over the batch (+ its backward when gradients are asked for).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def fused_head(model, temperature: float = 1.0):
    """While active, `completion_logps(model, ...)` works; the model's own forward is restored on exit (TRL's
    trainer leaves its patch in place; this does not)."""
    from trl.trainer.utils import add_fused_lm_head

    own = vars(model)
    had, saved = "forward" in own, own.get("forward")
    add_fused_lm_head(model, temperature=temperature)
    try:
        yield model
    finally:
        if had:
            model.forward = saved
        else:
            del model.forward


def completion_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_mask: torch.Tensor) -> torch.Tensor:
    """log p(x_t | x_<t) / T-scaled, at completion positions, 0 elsewhere (and at t = 0). All (B, T); needs an
    active `fused_head(model, T)`."""
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    return torch.nn.functional.pad(out.log_probs, (1, 0))

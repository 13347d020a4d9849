"""Delta grafting as a probe pass (graft.py): one short full-parameter GRPO run on a copy of the model, then each
block's graft gain S(base + Δ_k) − S(base) and knock-out loss S(run) − S(run − Δ_k), held-out rewards estimated by
importance sampling over one round of base-policy rollouts on held-out prompts. Not in the default signal list: it
costs graft_steps RL steps, one rollout round and 2L + 2 forwards (counted in forward_passes; the steps in rl_steps).
"""

from __future__ import annotations

import torch

from ..graft import GraftResult, graft_blocks, heldout_rollouts, short_run
from ..passes import register_pass
from . import register_signal


@register_pass("graft", "short full-parameter GRPO run, then each block's Δ grafted onto the base and knocked out "
                        "of the run, scored by forward passes", needs=())
def graft_pass(ctx) -> GraftResult:
    if ctx.task is None or ctx.tokenizer is None:
        raise ValueError("the graft pass needs the probe's task and tokenizer in its PassContext")
    rollouts = heldout_rollouts(ctx.model, ctx.tokenizer, ctx.task, ctx.config, ctx.precision)
    ctx.cost.forward(int(rollouts.attention_mask.sum()))  # their old log-probs
    ctx.cost.generated += rollouts.generated_tokens
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        run = short_run(ctx.model, ctx.tokenizer, ctx.task, ctx.config, progress=ctx.progress)
    ctx.cost.rl_steps += ctx.config.graft_steps
    return graft_blocks(ctx.model, run, rollouts, temperature=ctx.config.temperature,
                        batch_size=ctx.config.batch_size, cost=ctx.cost, progress=ctx.progress)


@register_signal("graft_gain", "S(base + Δ_k) − S(base): held-out reward of the base with only block k's update "
                 "from a short full-parameter RL run (costs an RL run; not a default signal)", needs=("graft",))
def graft_gain(graft: GraftResult):
    return graft.graft_gain


@register_signal("knockout_loss", "S(run) − S(run − Δ_k): held-out reward lost when block k's update is removed "
                 "from a short full-parameter RL run (costs an RL run; not a default signal)", needs=("graft",))
def knockout_loss(graft: GraftResult):
    return graft.knockout_loss

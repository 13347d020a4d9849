"""Rollouts and the GRPO maths on them: sample G completions per prompt once, score them with the task's
reward, and turn rewards into group-relative advantages (GRPO: (r - mean)/(std + 1e-4) with torch's
unbiased std, as TRL; Dr. GRPO: r - mean). Cost: one `generate` call per chunk of prompts, plus one forward
pass to record the sampling policy's per-token log-probs."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch

from .errors import LayerscoutError

ADV_EPS = 1e-4  # TRL's constant in (r - mean) / (std + eps)


# ---------------------------------------------------------------- pure maths

def group_advantages(rewards: torch.Tensor, group_size: int, loss_type: str = "grpo") -> torch.Tensor:
    """rewards (N,) laid out group after group, N = groups * group_size -> advantages (N,).

    >>> group_advantages(torch.tensor([1., 0., 0., 0.]), 2, "dr_grpo")
    tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if not torch.isfinite(rewards).all():
        raise LayerscoutError("the reward function returned NaN or inf")
    r = rewards.view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if loss_type == "grpo":
        adv = adv / (r.std(dim=1, keepdim=True) + ADV_EPS)
    return adv.reshape(-1)


def sequence_weights(advantages: torch.Tensor, completion_mask: torch.Tensor, loss_type: str,
                     max_completion_length: int) -> torch.Tensor:
    """Per-sequence weight c_i with objective J = sum_i c_i * sum_t logp_it, matching TRL's loss normalisation.

    grpo (and gigpo, which normalises as GRPO): c_i = A_i / (|y_i| * N) (token mean per sequence, then mean over
    sequences); dr_grpo: c_i = A_i / (N * max_completion_length) (a constant normaliser, no length bias).
    advantages (N,), completion_mask (N, T) -> (N,)
    """
    n = advantages.numel()
    if loss_type in ("grpo", "gigpo"):
        return advantages / (completion_mask.sum(dim=1).clamp(min=1) * n)
    return advantages / (n * max_completion_length)


def surrogate_objective(logps: torch.Tensor, old_logps: torch.Tensor, completion_mask: torch.Tensor,
                        weights: torch.Tensor, clip_eps: float | None = None) -> torch.Tensor:
    """Importance-weighted advantage J = sum_i c_i * sum_t ratio_it (clipped as PPO/GRPO when clip_eps is set).

    logps, old_logps, completion_mask: (N, T); weights c_i (N,). At logps == old_logps the gradient equals
    the policy gradient sum_i c_i * grad(sum_t logp_it).
    """
    ratio = torch.exp(logps - old_logps)
    w = weights[:, None]
    per_token = ratio * w
    if clip_eps is not None:
        per_token = torch.minimum(per_token, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * w)
    return (per_token * completion_mask).sum()


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), input_ids (B, T) -> log p(x_t | x_<t) as (B, T), 0 at t = 0 (no prediction)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    out = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(out, (1, 0))


# ---------------------------------------------------------------- rollouts

@dataclass
class Rollouts:
    """N = groups * group_size sequences, prompt left-padded then completion right-padded.

    input_ids, attention_mask, completion_mask, old_logps: (N, T); rewards, advantages, group: (N,).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    group: torch.Tensor
    old_logps: torch.Tensor
    completions: list[str]
    group_size: int

    @property
    def num_groups(self) -> int:
        return int(self.group.max()) + 1 if self.group.numel() else 0

    @property
    def generated_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def informative_groups(self) -> list[int]:
        """Prompt groups whose completions got different rewards: the only ones that carry a policy gradient."""
        r = self.rewards.view(-1, self.group_size)
        return torch.nonzero(r.amax(dim=1) > r.amin(dim=1)).flatten().tolist()

    def select_groups(self, groups: Sequence[int]) -> "Rollouts":
        """The sub-batch of the given prompt groups, renumbered 0..len(groups)-1."""
        keep = torch.cat([torch.nonzero(self.group == g).flatten() for g in groups])
        remap = {g: i for i, g in enumerate(groups)}
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in out.items():
            if isinstance(value, torch.Tensor):
                out[name] = value[keep]
        out["group"] = torch.tensor([remap[int(g)] for g in self.group[keep]])
        out["completions"] = [self.completions[i] for i in keep.tolist()]
        return type(self)(**out)


def generate(model, tokenizer, prompts: list[str], *, num_generations: int = 1, max_new_tokens: int = 32,
             temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True, batch_size: int = 32,
             progress: Callable[[int], None] | None = None):
    """Sample `num_generations` completions per rendered prompt, grouped prompt after prompt.

    Returns (input_ids (N, T), attention_mask (N, T), completion_mask (N, T), texts list[N]); the completion
    mask covers generated tokens up to and including the first EOS.
    """
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    rows: list[tuple[list[int], list[int]]] = []
    per_chunk = max(1, batch_size // num_generations)
    for start in range(0, len(prompts), per_chunk):
        chunk = prompts[start:start + per_chunk]
        # decoder-only generation continues from the right edge: pad on the left, per call (tokenizer untouched)
        enc = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left",
                        add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                 temperature=temperature if do_sample else None, top_p=top_p if do_sample else None,
                                 top_k=0 if do_sample else None, num_return_sequences=num_generations,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        plen = enc["input_ids"].shape[1]
        for j in range(out.shape[0]):
            row = j // num_generations
            prompt_ids = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
            comp = out[j, plen:].tolist()
            if eos in comp:  # tokens after EOS are padding
                comp = comp[:comp.index(eos) + 1]
            rows.append((prompt_ids, comp))
        if progress:
            progress(len(chunk))
    return _pack(rows, tokenizer)


def _pack(rows, tokenizer):
    """Left-pad prompts and right-pad completions to one (N, T) batch."""
    pmax = max(len(p) for p, _ in rows)
    cmax = max(1, max(len(c) for _, c in rows))
    pad = tokenizer.pad_token_id
    ids, attn, cmask, texts = [], [], [], []
    for p, c in rows:
        lp, lc = pmax - len(p), cmax - len(c)
        ids.append([pad] * lp + p + c + [pad] * lc)
        attn.append([0] * lp + [1] * (len(p) + len(c)) + [0] * lc)
        cmask.append([0] * pmax + [1] * len(c) + [0] * lc)
        texts.append(tokenizer.decode(c, skip_special_tokens=True))
    return torch.tensor(ids), torch.tensor(attn), torch.tensor(cmask), texts


def sequence_logps(model, input_ids, attention_mask, batch_size: int = 8) -> torch.Tensor:
    """Per-token log-probs (N, T) of the given sequences under `model`, without gradients."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[s:s + batch_size].to(device)
            am = attention_mask[s:s + batch_size].to(device)
            out.append(token_logps(model(input_ids=ids, attention_mask=am).logits, ids).cpu())
    return torch.cat(out)


def collect_rollouts(model, tokenizer, task, dataset, *, num_generations: int, max_completion_length: int,
                     temperature: float = 1.0, top_p: float = 1.0, loss_type: str = "grpo",
                     batch_size: int = 32, progress=None) -> Rollouts:
    """Generate, score with `task.reward` (extra dataset columns passed as TRL does), compute advantages."""
    from .tasks import render_prompt

    if len(dataset) == 0:
        raise LayerscoutError("no prompts to roll out: the dataset is empty")
    prompts = [render_prompt(tokenizer, p) for p in dataset["prompt"]]
    ids, attn, cmask, texts = generate(model, tokenizer, prompts, num_generations=num_generations,
                                       max_new_tokens=max_completion_length, temperature=temperature,
                                       top_p=top_p, batch_size=batch_size, progress=progress)
    columns = {c: [v for v in dataset[c] for _ in range(num_generations)] for c in dataset.column_names
               if c != "prompt"}
    rewards = torch.tensor(task.reward(prompts=[p for p in dataset["prompt"] for _ in range(num_generations)],
                                       completions=texts, **columns), dtype=torch.float32)
    if rewards.numel() != len(texts):
        raise LayerscoutError(f"the reward function returned {rewards.numel()} rewards for {len(texts)} completions")
    advantages = group_advantages(rewards, num_generations, loss_type)
    old = sequence_logps(model, ids, attn, batch_size=max(1, batch_size // 4))
    group = torch.arange(len(prompts)).repeat_interleave(num_generations)
    return Rollouts(ids, attn, cmask, rewards, advantages, group, old, texts, num_generations)

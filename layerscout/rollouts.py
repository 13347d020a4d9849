"""Rollouts: sample G completions per prompt once, score them with the task's reward, turn rewards into group
advantages (grpo.py) and record the sampling policy's per-token log-probs, temperature-scaled as TRL's (logprobs.py).
Cost: one `generate` call per chunk of prompts, plus one forward pass over the rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch

from .errors import LayerscoutError
from .grpo import group_advantages, informative_groups
from .logprobs import completion_logps, fused_head
from .precision import Precision, model_precision

FEW_SHOT_STOP = ["\n\nQuestion:"]  # a base model that finished a few-shot answer starts the next question

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
    old_logps: torch.Tensor | None  # None when no pass reads them (pack_rollouts(old_logps=False))
    completions: list[str]
    group_size: int

    @property
    def num_groups(self) -> int:
        return int(self.group.max()) + 1 if self.group.numel() else 0

    @property
    def generated_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def informative_groups(self) -> list[int]:
        """Prompt groups whose completions got different rewards (the only ones with a policy gradient)."""
        return informative_groups(self.rewards, self.group_size)

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


def generate(model, tokenizer, prompts: list[str], **kwargs):
    """Sample `num_generations` completions per rendered prompt, grouped prompt after prompt (options: sample_rows).

    Returns (input_ids (N, T), attention_mask (N, T), completion_mask (N, T), texts list[N]); the completion
    mask covers generated tokens up to and including the first EOS.
    """
    return _pack(sample_rows(model, tokenizer, prompts, **kwargs), tokenizer)


def sample_rows(model, tokenizer, prompts: list[str], *, num_generations: int = 1, max_new_tokens: int = 32,
                temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True, batch_size: int = 32,
                stop_strings: list[str] | None = None,
                progress: Callable[[int], None] | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) per sampled completion, unpadded; a completion ends at its first EOS (kept)
    or, with `stop_strings`, where one of them is complete (for few-shot prompts of base models)."""
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
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                                 **({"stop_strings": stop_strings, "tokenizer": tokenizer} if stop_strings else {}))
        plen = enc["input_ids"].shape[1]
        for j in range(out.shape[0]):
            row = j // num_generations
            prompt_ids = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
            comp = out[j, plen:].tolist()
            if eos in comp:  # tokens after EOS are padding
                comp = comp[:comp.index(eos) + 1]
            elif stop_strings:  # a stopped sequence is padded to the batch's length
                while comp and comp[-1] == tokenizer.pad_token_id:
                    comp.pop()
            rows.append((prompt_ids, comp))
        if progress:
            progress(len(chunk))
    return rows


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


def sequence_logps(model, input_ids, attention_mask, completion_mask, *, temperature: float = 1.0,
                   precision: Precision | None = None, batch_size: int = 8) -> torch.Tensor:
    """Completion log-probs (N, T) of the given sequences under `model` (0 off the completion), without gradients."""
    device = next(model.parameters()).device
    precision = precision or model_precision(model)
    out = []
    with torch.no_grad(), fused_head(model, temperature), precision.autocast():
        for s in range(0, input_ids.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            out.append(completion_logps(model, input_ids[sl].to(device), attention_mask[sl].to(device),
                                        completion_mask[sl].to(device)).float().cpu())
    return torch.cat(out)


@dataclass
class Groups:
    """Sampled, scored prompt groups before packing: rows[i] = (prompt ids, completion ids), texts[i] and
    rewards[i] for completion i, group after group of `group_size`; `prompts` the dataset rows (one per group)."""

    rows: list[tuple[list[int], list[int]]]
    texts: list[str]
    rewards: torch.Tensor
    group_size: int
    prompts: list[dict]

    @property
    def num_groups(self) -> int:
        return len(self.prompts)

    def pass_rates(self):
        """Mean reward per group, (groups,) numpy."""
        return self.rewards.view(-1, self.group_size).mean(dim=1).numpy()

    def informative(self) -> list[int]:
        return informative_groups(self.rewards, self.group_size)

    def extend(self, other: "Groups") -> "Groups":
        return Groups(self.rows + other.rows, self.texts + other.texts, torch.cat([self.rewards, other.rewards]),
                      self.group_size, self.prompts + other.prompts)

    def select(self, groups: Sequence[int]) -> "Groups":
        idx = [g * self.group_size + j for g in groups for j in range(self.group_size)]
        return Groups([self.rows[i] for i in idx], [self.texts[i] for i in idx], self.rewards[idx],
                      self.group_size, [self.prompts[g] for g in groups])


def sample_groups(model, tokenizer, task, dataset, *, num_generations: int, max_completion_length: int,
                  temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 32,
                  precision: Precision | None = None, render: dict | None = None, progress=None) -> Groups:
    """Render (tasks.render_prompt with the `render` options), generate and score `num_generations` completions
    per dataset row, passing the extra dataset columns to `task.reward` as TRL does."""
    from .tasks import render_prompt

    if len(dataset) == 0:
        raise LayerscoutError("no prompts to roll out: the dataset is empty")
    render = render or {}
    prompts = [render_prompt(tokenizer, p, **render) for p in dataset["prompt"]]
    precision = precision or model_precision(model)
    with precision.autocast():
        rows = sample_rows(model, tokenizer, prompts, num_generations=num_generations,
                           max_new_tokens=max_completion_length, temperature=temperature, top_p=top_p,
                           batch_size=batch_size, progress=progress,
                           stop_strings=FEW_SHOT_STOP if render.get("shots") and not tokenizer.chat_template
                           else None)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for _, c in rows]
    columns = {c: [v for v in dataset[c] for _ in range(num_generations)] for c in dataset.column_names
               if c != "prompt"}
    rewards = torch.tensor(task.reward(prompts=[p for p in dataset["prompt"] for _ in range(num_generations)],
                                       completions=texts, **columns), dtype=torch.float32)
    if rewards.numel() != len(texts):
        raise LayerscoutError(f"the reward function returned {rewards.numel()} rewards for {len(texts)} completions")
    return Groups(rows, texts, rewards, num_generations, list(dataset))


def pack_rollouts(model, tokenizer, groups: Groups, *, temperature: float = 1.0, loss_type: str = "grpo",
                  batch_size: int = 32, precision: Precision | None = None, old_logps: bool = True) -> Rollouts:
    """Pad the groups into one batch, compute advantages, and (unless `old_logps` is False: a forward over every
    rollout that only ratio-based passes read) record the old log-probs at `temperature` under the precision policy
    (default: the model's own)."""
    ids, attn, cmask, texts = _pack(groups.rows, tokenizer)
    advantages = group_advantages(groups.rewards, groups.group_size, loss_type)
    old = sequence_logps(model, ids, attn, cmask, temperature=temperature, precision=precision,
                         batch_size=max(1, batch_size // 4)) if old_logps else None
    group = torch.arange(groups.num_groups).repeat_interleave(groups.group_size)
    return Rollouts(ids, attn, cmask, groups.rewards, advantages, group, old, texts, groups.group_size)


def collect_rollouts(model, tokenizer, task, dataset, *, num_generations: int, max_completion_length: int,
                     temperature: float = 1.0, top_p: float = 1.0, loss_type: str = "grpo",
                     batch_size: int = 32, precision: Precision | None = None, render: dict | None = None,
                     progress=None) -> Rollouts:
    """sample_groups, then pack_rollouts: one round of rollouts on every row of `dataset`."""
    groups = sample_groups(model, tokenizer, task, dataset, num_generations=num_generations,
                           max_completion_length=max_completion_length, temperature=temperature, top_p=top_p,
                           batch_size=batch_size, precision=precision, render=render, progress=progress)
    return pack_rollouts(model, tokenizer, groups, temperature=temperature, loss_type=loss_type,
                         batch_size=batch_size, precision=precision)

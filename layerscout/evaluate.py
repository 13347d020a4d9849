"""Held-out score S: the mean task reward of a model's completions on the task's held-out prompts.

S is the quantity in the paper's layer contribution C(k) = (S_k - S_base) / (S_full - S_base). Greedy decoding
when `num_samples == 1` (deterministic), otherwise `num_samples` sampled completions per prompt, averaged.
The reward of every prompt is kept, keyed by item id, so two runs scored on the same prompts can be compared
prompt by prompt (paired standard errors, paired bootstrap: metrics.py).
Cost: one batched `generate` over n * num_samples sequences of at most `max_new_tokens` tokens. Multi-turn tasks
(those with `play`, e.g. agent) play each held-out game to its end instead: up to max_turns such calls.
"""

from __future__ import annotations

import time
from typing import Any

from .errors import LayerscoutError


def evaluate(model, tokenizer, task, n: int = 64, seed: int = 0, num_samples: int = 1,
             max_new_tokens: int = 32, batch_size: int = 32, temperature: float = 1.0) -> dict[str, Any]:
    """Score `model` on up to `n` held-out prompts of `task`.

    Returns {"score": mean reward in [0, 1], "n": prompts scored, "num_samples", "greedy", "seconds",
    "ids": item id per prompt, "per_prompt": mean reward per prompt over its samples, and, for tasks with gold
    answers, "constant_answer": the score of the most common one given to every prompt (Task.constant_baseline)}.
    Example: `evaluate(model, tok, get_task("math"), n=64)["score"]`.
    """
    import torch

    from .rollouts import generate
    from .tasks import render_prompt

    if num_samples < 1:
        raise LayerscoutError(f"num_samples must be >= 1; got {num_samples}")
    start = time.perf_counter()
    data = task.load_prompts("heldout", n, seed)
    prompts = [render_prompt(tokenizer, p) for p in data["prompt"]]
    greedy = num_samples == 1
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # seeded; global RNG untouched
            torch.manual_seed(seed)
            if callable(getattr(task, "play", None)):  # multi-turn: play each held-out game to the end
                rewards = [e.reward for e in task.play(model, tokenizer, list(data["answer"]),
                                                       num_generations=num_samples, max_new_tokens=max_new_tokens,
                                                       temperature=temperature, do_sample=not greedy,
                                                       batch_size=batch_size)]
            else:
                _, _, _, texts = generate(model, tokenizer, prompts, num_generations=num_samples,
                                          max_new_tokens=max_new_tokens, temperature=temperature,
                                          do_sample=not greedy, batch_size=batch_size)
                columns = {c: [v for v in data[c] for _ in range(num_samples)] for c in data.column_names
                           if c != "prompt"}
                rewards = task.reward(prompts=[p for p in data["prompt"] for _ in range(num_samples)],
                                      completions=texts, **columns)  # TRL's reward-function signature
    finally:
        model.train(was_training)
    per_prompt = [sum(rewards[i:i + num_samples]) / num_samples for i in range(0, len(rewards), num_samples)]
    result = {"score": float(sum(rewards) / len(rewards)), "n": len(prompts), "num_samples": num_samples,
              "greedy": greedy, "seconds": round(time.perf_counter() - start, 3),
              "ids": item_ids(data), "per_prompt": [float(r) for r in per_prompt]}
    baseline = task.constant_baseline(list(data["answer"])) if "answer" in data.column_names else None
    return {**result, "constant_answer": baseline} if baseline is not None else result


def constant_warning(result: dict) -> str | None:
    """Why a gain on this held-out set may be the answer distribution learnt, not the task: the most common gold
    answer, given to every prompt, scores above the model. None when it does not."""
    baseline = result.get("constant_answer")
    if baseline is None or baseline["score"] <= result["score"]:
        return None
    return (f"answering {baseline['answer']!r} to every held-out prompt scores {baseline['score']:.3f}, above the "
            f"model's {result['score']:.3f}: RL can gain by learning that answer alone; use prompts whose answers vary")


def item_ids(data) -> list[str]:
    """A stable id per dataset row: its "id" column when the task has one, else the question text."""
    column = "id" if "id" in data.column_names else "question"
    return [str(x) for x in data[column]]

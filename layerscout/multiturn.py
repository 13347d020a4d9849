"""RL on multi-turn tasks (`agent`): GiGPO, or GRPO / Dr. GRPO on whole episodes. TRL 1.16's multi-turn paths
(tools, environment_factory, rollout_func) score one completion per rollout and compute (B,) advantages inside
the trainer, so per-step advantages over anchor states cannot pass through them; this trainer does.

Each optimizer step plays num_generations episodes of prompts_per_step training games, flattens every episode into
per-step samples (prompt = the conversation so far, completion = the action) and takes one AdamW step on the
clipped token-level GRPO surrogate (grpo.py) with each sample's advantage A = A^E + omega * A^S (gigpo.py;
omega = 0 for grpo / dr_grpo). It has the surface train_layers uses of TRL's trainer (train(), state,
TrainerCallbacks) and checkpoints for resume. Cost per step: up to max_turns generate calls over the unfinished
episodes, then one forward+backward over all step samples.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import RLConfig
from .errors import LayerscoutError
from .gigpo import GAMMA, OMEGA, anchor_share, gigpo_advantages, informative_steps
from .grpo import sequence_weights, surrogate_objective
from .logprobs import completion_logps, fused_head
from .precision import Precision, model_precision
from .rollouts import Rollouts, _pack, sequence_logps

CLIP_EPS = 0.2  # TRL's default epsilon
TRAINABLE, OPTIMIZER, RNG, STATE = "trainable.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"


def is_multi_turn(task) -> bool:
    return callable(getattr(task, "play", None))


def check_algo(task, loss_type: str) -> None:
    """GiGPO groups steps of multi-turn episodes: refuse it on a single-turn task."""
    if loss_type == "gigpo" and not is_multi_turn(task):
        raise LayerscoutError(f"gigpo needs a multi-turn task (agent); task {task.name!r} is single-turn: "
                              "use grpo or dr_grpo")


def check_supported(task, config: RLConfig) -> None:
    """Fail before any work when `config` asks for what this trainer (or TRL, for single-turn tasks) cannot do."""
    check_algo(task, config.loss_type)
    if not is_multi_turn(task):
        return
    if config.beta > 0:
        raise LayerscoutError(f"the multi-turn trainer has no KL term: set beta=0 (got {config.beta})")
    if config.trl.get("use_vllm"):
        raise LayerscoutError("the multi-turn trainer generates with transformers: drop trl.use_vllm")


def play_and_score(model, tokenizer, task, games: list[str], *, num_generations: int, max_completion_length: int,
                   temperature: float, top_p: float, loss_type: str, gamma: float, omega: float, batch_size: int,
                   precision: Precision | None = None):
    """Play num_generations episodes of every game (sampling, dropout off, under the precision policy's autocast)
    and score their steps: (episodes, step samples (prompt ids, completion ids) episode after episode, advantages
    A^E + omega * A^S per step sample)."""
    was_training = model.training
    model.eval()
    try:
        with (precision or model_precision(model)).autocast():
            episodes = task.play(model, tokenizer, games, num_generations=num_generations,
                                 max_new_tokens=max_completion_length, temperature=temperature, top_p=top_p,
                                 batch_size=batch_size)
    finally:
        model.train(was_training)
    advantages = gigpo_advantages([torch.tensor(e.step_rewards) for e in episodes], [e.anchors for e in episodes],
                                  num_generations, "dr_grpo" if loss_type == "dr_grpo" else "grpo", gamma, omega)
    return episodes, [s for e in episodes for s in e.samples], advantages


@dataclass
class StepRollouts(Rollouts):
    """Rollouts of a multi-turn task for the probe: one row per step sample (the conversation so far -> the action),
    grouped by game, so groups differ in rows (group_size counts episodes per game). `rewards` holds each row's
    episode reward, `advantages` GiGPO's, `informative` (N,) where an advantage can be non-zero."""

    informative: torch.Tensor

    def informative_groups(self) -> list[int]:
        """Games with a step whose advantage can be non-zero (gigpo.informative_steps): exact, unlike `advantages != 0`."""
        return sorted(set(self.group[self.informative].tolist()))


def episode_rollouts(model, tokenizer, task, games: list[str], *, num_generations: int, max_completion_length: int,
                     temperature: float = 1.0, top_p: float = 1.0, loss_type: str = "gigpo", batch_size: int = 32,
                     gamma: float = GAMMA, omega: float = OMEGA, precision: Precision | None = None) -> StepRollouts:
    """One round of episodes as the probe's rollouts: play, GiGPO advantages (omega applies to gigpo only; grpo /
    dr_grpo score whole episodes), the sampling policy's per-token log-probs at `temperature` (as TRL's) under the
    precision policy (default: the model's own). Cost: the episodes' generate calls and one forward over the step
    samples."""
    precision = precision or model_precision(model)
    omega = omega if loss_type == "gigpo" else 0.0
    episodes, samples, advantages = play_and_score(
        model, tokenizer, task, games, num_generations=num_generations, max_completion_length=max_completion_length,
        temperature=temperature, top_p=top_p, loss_type=loss_type, gamma=gamma, omega=omega, batch_size=batch_size,
        precision=precision)
    steps = torch.tensor([len(e.samples) for e in episodes])
    ids, attn, cmask, texts = _pack(samples, tokenizer)
    live = informative_steps([torch.tensor(e.step_rewards) for e in episodes], [e.anchors for e in episodes],
                             num_generations, gamma, omega)
    old = sequence_logps(model, ids, attn, cmask, temperature=temperature, precision=precision,
                         batch_size=max(1, batch_size // 4))
    return StepRollouts(
        input_ids=ids, attention_mask=attn, completion_mask=cmask,
        rewards=torch.tensor([e.reward for e in episodes], dtype=torch.float32).repeat_interleave(steps),
        advantages=advantages, group=torch.arange(len(episodes)).div(num_generations, rounding_mode="floor")
        .repeat_interleave(steps), old_logps=old, completions=texts, group_size=num_generations, informative=live)


class MultiTurnTrainer:
    """Plays, scores and updates; `train(resume_from_checkpoint)` runs config.max_steps optimizer steps.

    `state` is a transformers TrainerState (global_step, log_history with "reward" per logged step), and
    `callbacks` are TrainerCallbacks, called with the model and optimizer as transformers' Trainer calls them.
    """

    def __init__(self, model, tokenizer, task, config: RLConfig, output_dir: str | Path, callbacks: list,
                 progress: bool = True):
        from transformers import DefaultFlowCallback, ProgressCallback, TrainerControl, TrainerState
        from transformers.trainer_callback import CallbackHandler

        check_supported(task, config)
        self.model, self.tokenizer, self.task, self.config = model, tokenizer, task, config
        self.out = Path(output_dir)
        # The TrainingArguments part of TRL's config drives logging and saving (GRPO normalises each sample).
        base = "dr_grpo" if config.loss_type == "dr_grpo" else "grpo"
        self.args = dataclasses.replace(config, loss_type=base).to_grpo_config(self.out, progress=progress)
        self.loss_type = base
        self.omega = config.step_advantage_w if config.loss_type == "gigpo" else 0.0
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, weight_decay=self.args.weight_decay,
                                           betas=(self.args.adam_beta1, self.args.adam_beta2),
                                           eps=self.args.adam_epsilon)
        self.games = list(task.load_prompts("train", config.train_prompts, config.seed)["answer"])
        self.state = TrainerState(max_steps=config.max_steps, logging_steps=config.logging_steps,
                                  save_steps=config.save_steps or config.max_steps + 1)
        self.control = TrainerControl()
        flow = [DefaultFlowCallback] + ([ProgressCallback] if progress else [])
        self.handler = CallbackHandler(flow + list(callbacks), model, tokenizer, self.optimizer, None)

    # ---------------------------------------------------------------- loop

    def train(self, resume_from_checkpoint: str | None = None) -> None:
        torch.manual_seed(self.config.seed)
        if resume_from_checkpoint:
            self._load_checkpoint(Path(resume_from_checkpoint))
        self.model.train()
        self.control = self.handler.on_train_begin(self.args, self.state, self.control)
        while self.state.global_step < self.config.max_steps:
            self.control = self.handler.on_step_begin(self.args, self.state, self.control)
            logs = self.step(self.games_for_step(self.state.global_step))
            self.state.global_step += 1
            self.control = self.handler.on_step_end(self.args, self.state, self.control)
            if self.control.should_log:
                self.state.log_history.append({**logs, "step": self.state.global_step})
                self.control = self.handler.on_log(self.args, self.state, self.control, logs=logs)
                self.control.should_log = False
            if self.control.should_save:
                self._save_checkpoint()
                self.control = self.handler.on_save(self.args, self.state, self.control)
                self.control.should_save = False
        self.control = self.handler.on_train_end(self.args, self.state, self.control)

    def games_for_step(self, step: int) -> list[str]:
        """The prompts_per_step games of optimizer step `step`: the training games cycled, reshuffled each pass
        with a seed fixed by (run seed, pass), so a resumed run sees the same games."""
        n, k = len(self.games), self.config.prompts_per_step
        out = []
        for i in range(step * k, (step + 1) * k):
            order = list(range(n))
            random.Random(self.config.seed * 100003 + i // n).shuffle(order)
            out.append(self.games[order[i % n]])
        return out

    def step(self, games: list[str]) -> dict:
        """One optimizer step on `games`; returns the logged numbers."""
        cfg = self.config
        episodes, samples, advantages = play_and_score(
            self.model, self.tokenizer, self.task, games, num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
            loss_type=self.loss_type, gamma=cfg.gamma, omega=self.omega,
            batch_size=cfg.prompts_per_step * cfg.num_generations)
        loss = self._backward(samples, advantages)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm) if cfg.max_grad_norm
                     else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None])))
        self.handler.on_pre_optimizer_step(self.args, self.state, self.control)
        self.optimizer.step()
        self.handler.on_optimizer_step(self.args, self.state, self.control)
        self.optimizer.zero_grad(set_to_none=True)
        rewards = torch.tensor([e.reward for e in episodes])
        return {"loss": loss, "reward": float(rewards.mean()), "reward_std": float(rewards.std()),
                "grad_norm": float(grad_norm), "learning_rate": cfg.learning_rate,
                "turns": sum(len(e.actions) for e in episodes) / len(episodes), "step_samples": len(samples),
                "won": sum(e.won for e in episodes) / len(episodes),
                "anchor_share": anchor_share([e.anchors for e in episodes], cfg.num_generations)}

    def _backward(self, samples: list[tuple[list[int], list[int]]], advantages: torch.Tensor) -> float:
        """Accumulate the gradient of -J over all step samples, in micro-batches of similar length (trimmed of
        all-padding columns) of TRL's per-device batch size, so trl.gradient_accumulation_steps (set from 50M
        parameters, RLConfig.sized_for) shrinks them as in TRL. Ratios are 1 (one update per batch, as TRL with
        num_iterations=1)."""
        device = next(self.model.parameters()).device
        ids, attn, cmask, _ = _pack(samples, self.tokenizer)
        weights = sequence_weights(advantages, cmask, self.loss_type, self.config.max_completion_length)
        order = sorted(range(len(samples)), key=lambda i: len(samples[i][0]) + len(samples[i][1]))
        size = self.args.per_device_train_batch_size  # completions / trl.gradient_accumulation_steps, as TRL's
        total = 0.0
        with fused_head(self.model, self.config.temperature):  # TRL's log-probs: temperature, no full logits
            for s in range(0, len(order), size):
                rows = torch.tensor(order[s:s + size])
                keep = attn[rows].bool().any(0)
                b_ids, b_attn, b_cmask = (t[rows][:, keep].to(device) for t in (ids, attn, cmask))
                logps = completion_logps(self.model, b_ids, b_attn, b_cmask)
                loss = -surrogate_objective(logps, logps.detach(), b_cmask, weights[rows].to(device),
                                            clip_eps=CLIP_EPS)
                loss.backward()
                total += float(loss.detach())
        return total

    # ---------------------------------------------------------------- checkpoints

    def _save_checkpoint(self) -> None:
        """checkpoint-N: trainable tensors, optimizer, RNG and trainer state; keeps the newest save_total_limit."""
        from safetensors.torch import save_file

        path = self.out / f"checkpoint-{self.state.global_step}"
        path.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad},
                  str(path / TRAINABLE))
        torch.save(self.optimizer.state_dict(), path / OPTIMIZER)
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, path / RNG)
        self.state.save_to_json(str(path / STATE))
        limit = self.config.save_total_limit
        done = sorted((p for p in self.out.glob("checkpoint-*") if (p / STATE).exists()),
                      key=lambda p: int(p.name.split("-")[1]))
        for old in done[:-limit] if limit else []:
            shutil.rmtree(old)

    def _load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file
        from transformers import TrainerState

        saved = load_file(str(path / TRAINABLE))
        own = dict(self.model.named_parameters())
        if set(saved) != {n for n, p in own.items() if p.requires_grad}:
            raise LayerscoutError(f"{path} was saved with other trainable blocks; resume with the same --layers")
        with torch.no_grad():
            for name, tensor in saved.items():
                own[name].copy_(tensor)
        self.optimizer.load_state_dict(torch.load(path / OPTIMIZER, weights_only=True))
        rng = torch.load(path / RNG, weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        loaded = TrainerState.load_from_json(str(path / STATE))
        self.state.global_step, self.state.log_history = loaded.global_step, loaded.log_history

"""Multi-turn text games from TextWorldExpress (Jansen & Cote 2022): a fast reimplementation of TextWorld's
CookingWorld (the First TextWorld Problems cooking games, ALFWorld's kin), CoinCollector and TextWorld
Commonsense, plus five more game families. The policy plays up to `max_turns` actions: each turn it sees the task,
the last `history` turns and the current observation with the valid actions, rendered with the tokenizer's chat
template, and answers with one action. Reward: 1 if the game is won (`reward: score`: the game's normalised score).

Games are seeded. Training games come from TWX's train fold (seeds 0-999), held-out games from its test fold
(seeds 20000-20999; option heldout_fold) less any game that also occurs in the train fold (same first observation
and same gold solution), so the splits are disjoint; each lists distinct games only. TWX's folds use disjoint
objects (Simon Says trains on fruit, tests on vegetables), so heldout_fold train splits the train fold itself for
held-out games of the training distribution. Needs a Java runtime (TWX's engine is a jar): one JVM per task,
~0.3 s to start, ~2 ms per reset, ~1 ms per step. Concurrent episodes share it by replaying their actions after a
reset.
"""

from __future__ import annotations

import functools
import random
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LayerscoutError
from . import register_task, render_prompt
from .base import Task, split_of

GAMES = ("cookingworld", "coin", "twc", "mapreader", "arithmetic", "sorting", "simonsays", "peckingorder")
FOLDS = {"train": (0, "getValidSeedsTrain"), "dev": (10000, "getValidSeedsDev"), "test": (20000, "getValidSeedsTest")}
REWARDS = ("success", "score")


@dataclass
class Episode:
    """One game played by the policy. Step t was taken from `anchors[t]` (the game state: room + inventory) after
    seeing `observations[t]`; `step_rewards[t]` is what it earned (the final success reward sits on the last step).
    `samples[t]` holds the (prompt_ids, completion_ids) the policy saw and produced at step t."""

    game: str
    task: str
    observations: list[str]
    valid_actions: list[list[str]]
    anchors: list[str]
    actions: list[str] = field(default_factory=list)
    step_rewards: list[float] = field(default_factory=list)
    samples: list[tuple[list[int], list[int]]] = field(default_factory=list)
    done: bool = False
    won: bool = False
    score: float = 0.0

    @property
    def reward(self) -> float:
        return float(sum(self.step_rewards))


def _draw(choices: list[str], rng: random.Random) -> str:
    return rng.choice(choices)


def parse_action(text: str) -> str:
    """The action in a completion: its first non-empty line, stripped ("" if none)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


@register_task("agent")
class AgentTask(Task):
    """Options: game (a TWX game: cookingworld, coin, twc, ...), game_params (TWX generation settings), max_turns
    (actions per episode), history (past turns shown besides the current observation), show_task (the task line
    above them), show_actions (list the valid actions under the current observation), reward (success | score),
    heldout_fold (test | dev: TWX's held-out games, whose objects no training game has; train: games of the
    training fold, split off by a hash of the game, for the same objects in new combinations), system_prompt."""

    version = 2  # 2: valid actions listed once each (TWX lists an action as often as the game needs it)
    options = {
        "game": "cookingworld",
        "game_params": {"numLocations": 1, "numIngredients": 1, "numDistractorItems": 0, "includeDoors": 0,
                        "limitInventorySize": 0},
        "max_turns": 12,
        "history": 2,
        "show_task": True,
        "show_actions": True,
        "reward": "success",
        "heldout_fold": "test",
        "system_prompt": None,
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        c = self.config
        if c["game"] not in GAMES:
            import difflib

            close = difflib.get_close_matches(str(c["game"]), GAMES, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise LayerscoutError(f"Unknown TextWorldExpress game {c['game']!r}.{hint} Available: {', '.join(GAMES)}")
        if c["reward"] not in REWARDS:
            raise LayerscoutError(f"agent reward must be one of {', '.join(REWARDS)}; got {c['reward']!r}")
        if not isinstance(c["max_turns"], int) or c["max_turns"] < 1:
            raise LayerscoutError(f"max_turns must be an int >= 1; got {c['max_turns']!r}")
        if not isinstance(c["history"], int) or c["history"] < 0:
            raise LayerscoutError(f"history must be an int >= 0; got {c['history']!r}")
        if c["heldout_fold"] not in FOLDS:
            raise LayerscoutError(f"heldout_fold must be one of {', '.join(FOLDS)}; got {c['heldout_fold']!r}")
        self._env = None
        self._games: dict[str, dict[tuple, int]] = {}

    # ------------------------------------------------------------------ environment

    @property
    def env(self):
        """The task's TextWorldExpress engine (one JVM), started and loaded with the game on first use."""
        if self._env is None:
            if shutil.which("java") is None:
                raise LayerscoutError("the agent task runs TextWorldExpress, which needs Java: install a JRE "
                                      "(Debian: apt-get install default-jre-headless)")
            from textworld_express import TextWorldExpressEnv

            env = TextWorldExpressEnv(envStepLimit=self.config["max_turns"] + 1)
            params = ",".join(f"{k}={v}" for k, v in sorted(self.config["game_params"].items()))
            try:
                env.load(gameName=self.config["game"], gameParams=params)
                obs, _ = env.reset(seed=0, gameFold="train")
                if obs.startswith("ERROR"):  # values it cannot parse load "successfully" but generate nothing
                    raise ValueError(obs.strip())
            except ValueError as e:
                env.close()
                raise LayerscoutError(f"TextWorldExpress rejected game_params {params!r}: {e}") from None
            self._env = env
        return self._env

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def _replay(self, game: str, actions: list[str]) -> dict:
        """Reset to `game` ("fold:seed") and replay `actions`; the infos after the last one."""
        fold, seed = game.split(":")
        _, infos = self.env.reset(seed=int(seed), gameFold=fold)
        for a in actions:
            _, _, _, infos = self.env.step(a)
        return infos

    def _anchor(self, infos: dict) -> str:
        """The state a step is taken from: room and inventory, where the game models them (not the feedback line:
        "You take the coin." is the same text in different states, and an invalid action leaves the state as it
        was); else the observation (Simon Says has no room: its observation is the instruction to follow)."""
        if infos["look"].strip() or infos["inventory"].strip():
            return infos["look"] + "\n" + infos["inventory"]
        return infos["observation"]

    def start(self, game: str) -> Episode:
        infos = self._replay(game, [])
        return Episode(game=game, task=infos["taskDescription"], observations=[infos["observation"]],
                       valid_actions=[sorted(set(infos["validActions"]))], anchors=[self._anchor(infos)])

    def step(self, episode: Episode, action: str) -> None:
        """Play `action` in `episode`: append the outcome, its step reward, and end the episode when the game is
        won, lost or out of turns."""
        before = self._progress(episode.score, episode.won)
        infos = self._replay(episode.game, episode.actions + [action])
        episode.actions.append(action)
        episode.won = bool(infos["tasksuccess"])
        episode.score = float(infos["score"])
        episode.step_rewards.append(self._progress(episode.score, episode.won) - before)
        episode.done = (episode.won or bool(infos["taskfailure"]) or episode.score >= 1.0
                        or len(episode.actions) >= self.config["max_turns"])
        if not episode.done:
            episode.observations.append(infos["observation"])
            episode.valid_actions.append(sorted(set(infos["validActions"])))
            episode.anchors.append(self._anchor(infos))

    def _progress(self, score: float, won: bool) -> float:
        if self.config["reward"] == "success":
            return float(won)
        return min(1.0, max(0.0, score))

    # ------------------------------------------------------------------ prompts

    def messages(self, episode: Episode) -> list[dict]:
        """The conversation the policy sees before its next action: task and the observation `history` turns back,
        then (action, observation) turns, the valid actions under the latest observation."""
        t = len(episode.actions)
        first = max(0, t - self.config["history"])
        system = self.config.get("system_prompt")
        out = [{"role": "system", "content": system}] if system else []
        for i in range(first, t + 1):
            text = episode.observations[i].strip()
            if i == first and self.config["show_task"]:
                text = f"{episode.task.strip()}\n{text}"
            if i == t and self.config["show_actions"]:
                text += "\nValid actions: " + ", ".join(episode.valid_actions[i])
            if i > first:
                out.append({"role": "assistant", "content": episode.actions[i - 1]})
            out.append({"role": "user", "content": text})
        return out

    def _examples(self, split: str, n: int, seed: int) -> list[dict]:
        """n distinct games of the split in seeded order: question = the first user message, id and answer = the
        game, "fold:seed" (two games may open with the same message). Training games come from TWX's train fold,
        held-out ones from heldout_fold less any game that is also a training game (same start and same solution):
        on small settings TWX's folds share games (37 of the default's 286 distinct test games are training games).
        With heldout_fold train, the train fold's games are split by a hash of their signature (base.split_of)."""
        held = self.config["heldout_fold"]
        fold = held if split == "heldout" else "train"
        games = self._signatures(fold)
        if held == "train":
            seeds = [s for signature, s in games.items() if split_of("\n".join((signature[0], *signature[1]))) == split]
        else:
            exclude = self._signatures("train") if split == "heldout" else {}
            seeds = [s for signature, s in games.items() if signature not in exclude]
        random.Random(seed).shuffle(seeds)
        episodes = [self.start(f"{fold}:{s}") for s in seeds[:n]]
        return [{"id": e.game, "question": self.messages(e)[-1]["content"], "answer": e.game} for e in episodes]

    def _signature(self, fold: str, seed: int) -> tuple[str, tuple[str, ...]]:
        """What identifies a game to a player: its first observation and its gold solution."""
        obs, _ = self.env.reset(seed=seed, gameFold=fold, generateGoldPath=True)
        return obs, tuple(self.env.getGoldActionSequence())

    def gold_actions(self, game: str) -> list[str]:
        """TWX's expert solution of `game` ("fold:seed")."""
        fold, seed = game.split(":")
        return list(self._signature(fold, int(seed))[1])

    def sft_examples(self, n: int, seed: int) -> list[tuple[list[dict], str, Callable[[random.Random], str]]]:
        """Expert trajectories for model organisms: for each of n training games, one example per step of its gold
        solution (the conversation the policy would see there, the gold action); the near miss is another valid
        action of that state, drawn at random (the gold one where there is no other)."""
        out = []
        for game in self.load_prompts("train", n, seed)["answer"]:
            episode = self.start(game)
            for action in self.gold_actions(game):
                others = [a for a in episode.valid_actions[-1] if a != action] or [action]
                out.append((self.messages(episode), action, functools.partial(_draw, others)))
                self.step(episode, action)
                if episode.done:
                    break
        return out

    def _signatures(self, fold: str) -> dict[tuple, int]:
        """Signature -> first seed, for every game of a fold (1000 seeds, ~2 s; cached on the task)."""
        if fold not in self._games:
            first, lister = FOLDS[fold]
            self.env.reset(seed=first, gameFold=fold)
            seeds = getattr(self.env, lister)()
            games: dict[tuple, int] = {}
            for s in seeds:
                games.setdefault(self._signature(fold, s), int(s))
            self._games[fold] = games
        return self._games[fold]

    # ------------------------------------------------------------------ reward

    def score(self, text: str, answer: str) -> float:
        """Open-loop score of a plan: play the completion's non-empty lines as actions in game `answer` ("fold:seed")
        and return the episode's reward (first max_turns lines)."""
        episode = self.start(answer)
        for line in [x.strip() for x in text.splitlines() if x.strip()][:self.config["max_turns"]]:
            self.step(episode, line)
            if episode.done:
                break
        return episode.reward

    def play(self, model, tokenizer, games: list[str], *, num_generations: int = 1, max_new_tokens: int = 16,
             temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True, batch_size: int = 32,
             progress: Callable[[int], None] | None = None) -> list[Episode]:
        """Play `num_generations` episodes of every game, closed loop: each turn, one `generate` call over all
        unfinished episodes (one action each), then one environment step each. Returns episodes game after game.
        Cost: up to max_turns generate calls of max_new_tokens tokens."""
        from ..rollouts import generate

        episodes = [self.start(g) for g in games for _ in range(num_generations)]
        for _ in range(self.config["max_turns"]):
            active = [e for e in episodes if not e.done]
            if not active:
                break
            prompts = [render_prompt(tokenizer, self.messages(e)) for e in active]
            ids, attn, cmask, texts = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                               temperature=temperature, top_p=top_p, do_sample=do_sample,
                                               batch_size=batch_size)
            for j, e in enumerate(active):
                prompt = ids[j][attn[j].bool() & ~cmask[j].bool()].tolist()
                e.samples.append((prompt, ids[j][cmask[j].bool()].tolist()))
                self.step(e, parse_action(texts[j]))
            if progress:
                progress(len(active))
        return episodes

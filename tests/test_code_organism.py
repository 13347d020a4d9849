# Run: python -m pytest tests/test_code_organism.py -q   (about 1 min on 2 cores: a tiny code organism is built for
# real; the slow test, pytest -m slow, uses the default 12-layer code organism and builds it if missing, ~1 h)
"""The templated code problems of the code organism: the set, its near misses, its split and sandboxed rewards;
the organism recipe on them; and the per-task default organism that `rank`, `train --auto-layer` and `calibrate`
use for `--task code` when no model is named."""

import dataclasses
import json
import random

import pytest
from click.testing import CliRunner

from layerscout.cli import cli
from layerscout.errors import LayerscoutError
from layerscout.tasks import get_task
from layerscout.tasks.base import split_of
from layerscout.tasks.code_templates import near_misses, template_items

FAST = {"timeout_s": 3.0}


def templates(**options):
    return get_task("code", source="templates", sandbox=FAST, **options)


def test_template_set_is_large_distinct_and_short():
    items = template_items()
    assert len(items) > 4000
    assert len({i["id"] for i in items}) == len({i["answer"] for i in items}) == len(items)
    assert all(i["entry_point"] == "f" and len(i["tests"]) == 3 for i in items)
    assert all(i["answer"].startswith("def f(") and "\n" not in i["answer"] for i in items)
    # a prompt and its answer fit the organism's 256 positions with room to spare
    assert max(len(i["prompt"]) + len(i["answer"]) for i in items) < 100
    assert template_items() == items  # no randomness between calls


def test_near_misses_by_hand():
    assert near_misses("def f(x): return x * 3") == ("def f(x): return x + 3", "def f(x): return x * 2",
                                                     "def f(x): return x * 4")
    assert near_misses("def f(x): return x >= 4") == ("def f(x): return x > 4", "def f(x): return x >= 3",
                                                      "def f(x): return x >= 5")
    assert near_misses("def f(x, y): return max(x, y) - 1") == (
        "def f(x, y): return max(x, y) + 1", "def f(x, y): return min(x, y) - 1", "def f(x, y): return max(x, y) - 0",
        "def f(x, y): return max(x, y) - 2")
    assert near_misses("def f(s): return s[-3:]") == ("def f(s): return s[-2:]", "def f(s): return s[-4:]")
    with pytest.raises(LayerscoutError, match="not a one-line templated function"):
        near_misses("print(1)")


def test_every_near_miss_fails_a_test_in_the_sandbox_and_the_gold_passes():
    task = templates()
    rows = task.load_prompts("heldout", 40, 0).to_list()
    rng = random.Random(0)
    gold = [r["answer"] for r in rows]
    missed = [task.near_miss(r["answer"], rng) for r in rows]
    assert all(m in near_misses(g) for m, g in zip(missed, gold))
    columns = {c: [r[c] for r in rows] * 2 for c in task.reward_columns}
    rewards = task.reward(gold + missed, **columns)
    assert rewards[:40] == [1.0] * 40
    assert max(rewards[40:]) < 1.0


def test_split_is_by_spec_and_deterministic():
    task = templates()
    train, heldout = task.load_prompts("train", 5000, 0), task.load_prompts("heldout", 5000, 0)
    assert len(train) + len(heldout) == len(template_items())
    assert not set(train["id"]) & set(heldout["id"])
    assert all(split_of(i) == "heldout" for i in heldout["id"]) and 0.15 < len(heldout) / len(train) < 0.35
    assert heldout.to_list()[:5] == templates().load_prompts("heldout", 5, 0).to_list()
    row = heldout[0]
    assert row["prompt"] == [{"role": "user", "content": row["id"]}] and row["question"] == row["id"]
    assert set(row) >= {"answer", "tests", "entry_point", "prefix", "setup"}


def test_source_errors():
    with pytest.raises(LayerscoutError, match="source must be one of humaneval, templates, dataset; got 'tpl'"):
        get_task("code", source="tpl")
    with pytest.raises(LayerscoutError, match="`dataset` is set but source is 'templates'"):
        get_task("code", source="templates", dataset="x.jsonl")
    with pytest.raises(LayerscoutError, match="code near misses need source 'templates'"):
        get_task("code").near_miss("def f(x): return x", random.Random(0))


def test_identical_programs_run_once(monkeypatch):
    from layerscout import sandbox

    calls = []

    def spy(programs, config=None):
        calls.append(len(programs))
        return real(programs, config)

    real = sandbox.run_programs
    monkeypatch.setattr(sandbox, "run_programs", spy)
    task = templates()
    row = task.load_prompts("train", 1, 0)[0]
    wrong = near_misses(row["answer"])[0]
    completions = [row["answer"], wrong, row["answer"], row["answer"], wrong]
    rewards = task.reward(completions, **{c: [row[c]] * 5 for c in task.reward_columns})
    assert calls == [2]
    assert rewards[0] == rewards[2] == rewards[3] == 1.0 and rewards[1] == rewards[4] < 1.0


def test_code_recipes_validate():
    for name, version in (("code", 2), ("humaneval", 1)):
        r = CliRunner().invoke(cli, ["probes", "validate", name])
        assert r.exit_code == 0 and f"ok: task code v{version}" in r.output, r.output


# ---------------------------------------------------------------- the organism and the per-task default

def test_organism_labels_are_gold_or_near_misses():
    from layerscout.organisms import _batches, _setup_train_data, build_tokenizer, task_organism

    config = dataclasses.replace(task_organism("code"), train_prompts=64, batch_size=64)
    task, tok = get_task("code", **config.task_options), build_tokenizer()
    train = _setup_train_data(task, tok, config)
    batch = next(_batches(train, config, tok))
    gold = {tok.decode(p): a for p, a, _ in train}
    hits = 0
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        answer = gold[tok.decode(ids[(labels < 0) & (mask > 0)])]
        label = tok.decode(labels[labels >= 0][:-1])  # the answer tokens, <eos> dropped
        assert label == answer or label in near_misses(answer)
        hits += label == answer
    assert 10 <= hits <= 45  # label_accuracy 0.4 of 64: 25.6 expected


@pytest.fixture
def tiny_code_default(tmp_path, monkeypatch):
    """`--task code` with no model names a 2-layer code organism (built here, for real, into a fresh cache)."""
    from layerscout import organisms

    monkeypatch.setenv("LAYERSCOUT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(organisms.TASK_ORGANISMS, "code", {
        **organisms.TASK_ORGANISMS["code"], "num_layers": 2, "hidden_size": 64, "max_steps": 300,
        "train_prompts": 500, "eval_prompts": 8})
    return organisms.default_organism_path(organisms.task_organism("code"), progress=False)


def test_task_organism_maps_code_and_falls_back_to_math():
    from layerscout.organisms import TASK_ORGANISMS, OrganismConfig, task_organism

    code = task_organism("code")
    assert code.task == "code" and code.task_options == {"source": "templates"} and code.num_layers == 12
    assert task_organism("math") == task_organism(None) == task_organism("humaneval") == OrganismConfig()
    assert set(TASK_ORGANISMS) == {"math", "code", "agent"} and task_organism("agent").task == "agent"
    code.task_options["source"] = "x"
    assert task_organism("code").task_options == {"source": "templates"}  # each call a fresh config


def test_rank_train_calibrate_on_code_with_no_model_use_the_code_organism(tiny_code_default, tmp_path):
    record = json.loads((tiny_code_default / "organism.json").read_text())
    assert record["config"]["task"] == "code" and 0.0 < record["pass_at_k"]
    small = ["-o", "num_prompts=8", "-o", "update_steps=1"]
    r = CliRunner().invoke(cli, ["rank", "--task", "code", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"]["num_layers"] == 2  # the code organism's shape, not the math one's
    # and its tokenizer: the dry run built no other organism (it used to build the whole math organism here)
    assert [p.name for p in tiny_code_default.parent.iterdir()] == [tiny_code_default.name]
    r = CliRunner().invoke(cli, ["rank", "--task", "code", "--json", "--quiet", *small])
    assert r.exit_code == 0, r.output
    ranking = json.loads(r.stdout)
    assert ranking["model"] == str(tiny_code_default) and len(ranking["layers"]) == 2
    rl = ["-o", "train_prompts=8", "-o", "prompts_per_step=2", "-o", "num_generations=2", "-o", "eval_prompts=8",
          "-o", "max_completion_length=40"]
    r = CliRunner().invoke(cli, ["train", "--task", "code", "--auto-layer", "--steps", "1", "--quiet", "--json", *rl,
                                 "--output", str(tmp_path / "auto")])
    assert r.exit_code == 0, r.output
    run = json.loads(r.stdout)
    assert run["model"] == str(tiny_code_default) and run["layers"] == [run["ranking"]["top_layer"]]
    r = CliRunner().invoke(cli, ["calibrate", "--task", "code", "--seeds", "1", "--steps", "1", "--layers", "1",
                                 "--output", str(tmp_path / "sweep"), "--quiet", "--json", "-o", "min_gain_se=0",
                                 *[x if x == "-o" else f"rl.{x}" for x in rl]])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ran"] == ["0/full", "0/layer-1"]
    manifest = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert manifest["n_layers"] == 2


@pytest.mark.slow
def test_default_code_organism_has_headroom_and_runs_rank():
    """The embedded code organism (12 layers; built once into the cache, ~1 h on 2 shared cores)."""
    from layerscout.organisms import default_organism_path, task_organism

    path = default_organism_path(task_organism("code"), progress=False)
    record = json.loads((path / "organism.json").read_text())
    assert record["pass_at_1"] < 0.8 and record["pass_at_k"] > 0.5
    r = CliRunner().invoke(cli, ["rank", "--task", "code", "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    ranking = json.loads(r.stdout)
    assert ranking["model"] == str(path) and len(ranking["layers"]) == 12
    assert ranking["rollouts"]["informative_groups"] > 0


def test_easy_functions_file_is_the_script_output_and_loads():
    import runpy
    from pathlib import Path

    data = Path(__file__).resolve().parent.parent / "data" / "code"
    rows = runpy.run_path(str(data / "make_easy_functions.py"))["problems"]()
    lines = (data / "easy_functions.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows and len(rows) == 240
    task = get_task("code", dataset=str(data / "easy_functions.jsonl"))
    assert len(task.load_prompts("train", 1000, 0)) + len(task.load_prompts("heldout", 1000, 0)) == 240

"""The click layer: help with examples, lazy imports, one-line errors with non-zero exit, parseable --json.
Run: pytest tests/test_cli.py"""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from layerscout.cli import cli
from layerscout.tasks.math import MathTask

COMMANDS = [["rank"], ["train"], ["eval"], ["apply"], ["export"], ["score"], ["organism", "build"], ["probes", "cp"],
            ["probes", "validate"]]


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_has_examples(cmd):
    r = run(*cmd, "--help")
    assert r.exit_code == 0 and "Example" in r.output


def test_help_and_task_listing_do_not_import_torch_or_trl():
    code = ("import sys; from layerscout.cli import cli; from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0; "
            "print(sorted(m for m in ('torch', 'trl', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("args, message", [
    (["rank", "/no/such/model"], "unknown model '/no/such/model'"),
    (["rank", "--task", "maht"], "Did you mean: math?"),
    (["rank", "-o", "num_prompts=abc"], "num_prompts expects int"),
    (["rank", "-o", "signals=[grad_nrom]"], "Unknown signal 'grad_nrom'. Did you mean: grad_norm"),
    (["rank", "-o", "num_generations=1"], "at least 2 generations per prompt; got 1"),
    (["train", "--output", "x", "--full", "--layers", "1"], "choose exactly one of"),
    (["train", "--output", "x", "--layers", "1", "--top-k", "2"], "only apply with --auto-layer"),
    (["train", "--output", "/proc/forbidden/run", "--full"], "cannot create output dir"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_bad_input_on_a_real_model(organism_path, tmp_path):
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--layers", "40", "--output", str(tmp_path / "a")])
    assert r.exit_code == 2 and "layer 40 out of range: the model has 6 decoder layers" in r.output
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--auto-layer", "--top-k", "9",
                                 "--ranking", str(tmp_path / "none.json"), "--output", str(tmp_path / "b")])
    assert r.exit_code == 2 and "no such ranking file" in r.output


def test_rank_json_and_output_file(organism_path, tmp_path):
    out = tmp_path / "ranking.json"
    r = CliRunner().invoke(cli, ["rank", str(organism_path), "--json", "--quiet", "--output", str(out),
                                 "-o", "num_prompts=12", "-o", "update_steps=2"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data == json.loads(out.read_text())
    assert data["n_layers"] == 6 and len(data["layers"]) == 6
    assert {"index", "score", "rank", "signals"} <= set(data["layers"][0])
    assert data["top_layer"] == min(data["layers"], key=lambda x: x["rank"])["index"]
    assert {"seconds", "generated_tokens", "forward_backward_passes"} <= set(data["cost"])
    assert data["config"]["task_version"] == MathTask.version and data["provenance"]["versions"]["torch"]

    # a ranking for a 4-layer model cannot pick blocks of a 6-layer one, and top-k beyond the depth fails
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--auto-layer", "--top-k", "9", "--ranking", str(out),
                                 "--output", str(tmp_path / "run")])
    assert r.exit_code == 2 and "top-k must be in 1..6" in r.output
    bad = dict(data, layers=data["layers"][:4])
    (tmp_path / "short.json").write_text(json.dumps(bad))
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--auto-layer", "--ranking", str(tmp_path / "short.json"),
                                 "--output", str(tmp_path / "run2")])
    assert r.exit_code == 2 and "4 layers" in r.output and "has 6" in r.output


def test_probes_cp_then_validate(tmp_path):
    dest = tmp_path / "my.yaml"
    assert run("probes", "cp", "math", str(dest)).exit_code == 0
    assert "ok: task math v2" in run("probes", "validate", str(dest)).output
    dest.write_text(dest.read_text().replace("num_prompts: 16", "num_prompts: many") + "bogus: 1\n")
    r = CliRunner().invoke(cli, ["probes", "validate", str(dest)])
    assert r.exit_code == 2
    assert "unknown key 'bogus'" in r.output and "num_prompts expects int" in r.output


def test_train_auto_layer_trains_the_rankings_top_blocks(organism_path, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "auto"
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--auto-layer", "--top-k", "2", "--steps", "1", "--quiet",
                                 "--json", "-o", "eval_prompts=4", "-o", "prompts_per_step=2",
                                 "-o", "max_completion_length=8", "--output", str(out)])
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    top = sorted(record["ranking"]["layers"], key=lambda x: x["rank"])[:2]
    assert record["layers"] == [x["index"] for x in top]
    with safe_open(out / "layer_delta.safetensors", "pt") as f:
        blocks = {int(k.split(".")[2]) for k in f.keys()}
    assert blocks == set(record["layers"])

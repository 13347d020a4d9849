"""The click layer: help with examples, lazy imports, one-line errors with non-zero exit, parseable --json.
Run: pytest tests/test_cli.py"""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from layerscout.cli import cli
from layerscout.tasks.math import MathTask

COMMANDS = [["rank"], ["train"], ["eval"], ["calibrate"], ["apply"], ["export"], ["score"], ["organism", "build"],
            ["probes", "cp"], ["probes", "validate"]]


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_has_examples(cmd):
    r = run(*cmd, "--help")
    assert r.exit_code == 0 and "Example" in r.stdout  # stdout: `layerscout rank --help | less` shows it


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
    (["train", "--output", "/proc/forbidden/run", "--full"], "cannot write to /proc/forbidden/run"),
    # output paths are checked before any model is loaded: the bad model would fail later
    (["rank", "/no/such/model", "--output", "/proc/forbidden/r.json"], "cannot write to /proc/forbidden"),
    (["train", "/no/such/model", "--layers", "1", "--output", "/proc/forbidden/run"], "cannot write to /proc"),
    (["calibrate", "/no/such/model", "--output", "/proc/forbidden/sweep"], "cannot write to /proc/forbidden/sweep"),
    (["validate", "r.json", "truth", "--output", "/proc/forbidden/report"], "cannot write to /proc/forbidden"),
    (["compare", "truth", "--output", "/proc/forbidden/cmp"], "cannot write to /proc/forbidden/cmp"),
    (["calibrate", "--seeds", "0", "--print-jobs", "--output", "sweep"], "0 is not in the range x>=1"),
    (["calibrate", "--seeds", "2", "--seed", "1"], "give --seeds N or --seed S, not both"),
    (["train", "--output", "x", "--layers", "1", "-o", "trl.learning_rate=1"],
     "trl.learning_rate is set by layerscout: use RLConfig.learning_rate"),
    (["train", "--output", "x", "--layers", "1", "-o", "trl.num_iteration=2"], "did you mean num_iterations"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_print_jobs_without_output_writes_nothing_into_the_working_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["calibrate", "--print-jobs"])
    assert r.exit_code == 2 and "--print-jobs writes the sweep manifest" in r.output
    assert list(tmp_path.iterdir()) == []


def test_a_result_that_cannot_be_written_is_rescued(tmp_path):
    from layerscout.errors import LayerscoutError
    from layerscout.records import write_json_or_rescue

    with pytest.raises(LayerscoutError, match="could not write /proc/forbidden/r.json") as err:
        write_json_or_rescue("/proc/forbidden/r.json", {"top_layer": 3})
    rescued = str(err.value).rsplit("saved to ", 1)[1]
    assert json.loads(open(rescued).read()) == {"top_layer": 3}


def test_records_name_the_commit_their_process_started_on(tmp_path):
    """A sweep shard runs for hours while commits land: its records must name the code it runs, the commit
    of its first ask. A copy of the package in its own git repo, committed to between two asks."""
    import os
    import shutil
    from pathlib import Path

    import layerscout

    shutil.copytree(Path(layerscout.__file__).parent, tmp_path / "layerscout",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "first"]):
        subprocess.run(git + args, cwd=tmp_path, check=True)
    script = ("import subprocess, layerscout.records as r; first = r.git_commit(); "
              f"subprocess.run({git!r} + ['commit', '-q', '--allow-empty', '-m', 'second'], check=True); "
              "print(first, r.provenance()['git_commit'], r.__file__)")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout.split()
    head = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert out[2].startswith(str(tmp_path)) and out[0] == out[1] == head.strip()


def test_calibrate_stdout_is_one_json_document(tmp_path):
    """Progress on: TRL's per-step log dicts must go to stderr, not into the summary."""
    import os
    from pathlib import Path

    from layerscout.organisms import build_model, build_tokenizer

    tok = build_tokenizer()
    build_model("qwen3", 2, len(tok), seed=0, hidden_size=32).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-m", "layerscout.cli", "calibrate", str(tmp_path / "tiny"), "--layers", "0",
                        "--seeds", "1", "--steps", "2", "--output", str(tmp_path / "sweep"), "--json", "-o",
                        "rl={train_prompts: 8, prompts_per_step: 2, num_generations: 2, max_completion_length: 4, "
                        "eval_prompts: 4}", "-o", "min_gain_se=0"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["ran"] == ["0/full", "0/layer-0"] and summary["flat_seeds"] == {}  # min_gain_se 0: none flagged
    assert "'loss'" in r.stderr


def test_bad_input_on_a_real_model(organism_path, tmp_path):
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--layers", "40", "--output", str(tmp_path / "a")])
    assert r.exit_code == 2 and "layer 40 out of range: the model has 6 decoder layers" in r.output
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--auto-layer", "--top-k", "9",
                                 "--ranking", str(tmp_path / "none.json"), "--output", str(tmp_path / "b")])
    assert r.exit_code == 2 and "no such ranking file" in r.output


@pytest.fixture(scope="module")
def ranked(organism_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("rank") / "ranking.json"
    r = CliRunner().invoke(cli, ["rank", str(organism_path), "--json", "--quiet", "--output", str(out),
                                 "-o", "num_prompts=12", "-o", "update_steps=2"])
    assert r.exit_code == 0, r.output
    return out, r


@pytest.fixture(scope="module")
def twin(organism_path, tmp_path_factory):
    """A model of the organism's architecture and depth with other (random) weights."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = tmp_path_factory.mktemp("twin")
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(organism_path)).save_pretrained(path)
    for f in [*organism_path.glob("tokenizer*"), *organism_path.glob("chat_template*")]:
        shutil.copy(f, path)
    return path


TRAIN_FAST = ["--steps", "1", "--quiet", "--json", "-o", "eval_prompts=4", "-o", "prompts_per_step=2",
              "-o", "max_completion_length=8"]


def test_a_ranking_of_another_model_is_refused_unless_forced(ranked, twin, tmp_path):
    ranking, _ = ranked
    r = CliRunner().invoke(cli, ["train", str(twin), "--auto-layer", "--ranking", str(ranking), *TRAIN_FAST,
                                 "--output", str(tmp_path / "refused")])
    assert r.exit_code == 2 and "the ranking was made on" in r.output and "the weights differ" in r.output
    assert "pass --force" in r.output and not (tmp_path / "refused" / "run_config.json").exists()
    out = tmp_path / "forced"
    r = CliRunner().invoke(cli, ["train", str(twin), "--auto-layer", "--ranking", str(ranking), "--force", *TRAIN_FAST,
                                 "--output", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "train_report.json").read_text())
    assert report["ranking_override"].startswith("forced: the ranking was made on") and report["steps"] == 1
    assert json.loads((out / "ranking.json").read_text()) == json.loads(ranking.read_text())  # kept in the run dir


def test_a_ranking_with_wrong_types_is_one_line(ranked, organism_path, tmp_path):
    data = json.loads(ranked[0].read_text())
    data["layers"][0]["rank"] = str(data["layers"][0]["rank"])
    data["seed"] = "zero"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--auto-layer", "--ranking", str(tmp_path / "bad.json"),
                                 "--output", str(tmp_path / "run")])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "seed expects int, got 'zero'" in r.output and "layers[0]: rank expects int" in r.output


def test_rank_json_and_output_file(ranked, organism_path, tmp_path):
    out, r = ranked
    data = json.loads(r.stdout)
    assert data == json.loads(out.read_text())
    assert data["n_layers"] == 6 and len(data["layers"]) == 6
    assert {"index", "score", "rank", "signals"} <= set(data["layers"][0])
    assert data["top_layer"] == min(data["layers"], key=lambda x: x["rank"])["index"]
    assert {"seconds", "generated_tokens", "forward_backward_passes"} <= set(data["cost"])
    assert data["config"]["task_version"] == MathTask.version and data["provenance"]["versions"]["torch"]
    assert data["config"]["recipe"] == "math" and data["model_fingerprint"]["sample"]

    # a ranking for a 4-layer model cannot pick blocks of a 6-layer one, and top-k beyond the depth fails
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--auto-layer", "--top-k", "9", "--ranking", str(out),
                                 "--output", str(tmp_path / "run")])
    assert r.exit_code == 2 and "top-k must be in 1..6" in r.output
    bad = dict(data, layers=[dict(x, index=i, rank=i + 1) for i, x in enumerate(data["layers"][:4])])
    (tmp_path / "short.json").write_text(json.dumps(bad))
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--auto-layer", "--ranking", str(tmp_path / "short.json"),
                                 "--output", str(tmp_path / "run2")])
    assert r.exit_code == 2 and "4 layers" in r.output and "has 6" in r.output


def test_auto_layer_trains_on_the_rung_the_probe_chose(ranked, organism_path, tmp_path):
    """A ranking probed on rung 1 (2-digit sums) trains on rung 1, not on the recipe's rung 0."""
    out, _ = ranked
    data = json.loads(out.read_text())
    assert data["rollouts"]["rung"] == "sum_1digit"          # the organism's own rung, where its pass rates sit
    data["rollouts"]["rung"] = "sum_2digit"
    (tmp_path / "r1.json").write_text(json.dumps(data))
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--auto-layer", "--ranking", str(tmp_path / "r1.json"),
                                 *TRAIN_FAST, "--output", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    record = json.loads(r.stdout)
    assert record["task_options"]["rung"] == 1
    assert record["task_options"]["generator_config"]["min_digits"] == 2


def test_a_quiet_run_prints_only_its_json(organism_path, tmp_path):
    """`--quiet --json`: stdout is the record, stderr is empty (it held transformers' weight-loading bar and a
    FutureWarning that TRL triggers every run)."""
    proc = subprocess.run([sys.executable, "-m", "layerscout.cli", "train", str(organism_path), "--layers", "1",
                           *TRAIN_FAST, "--output", str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout)["layers"] == [1]


def test_probes_cp_then_validate(tmp_path):
    dest = tmp_path / "my.yaml"
    assert run("probes", "cp", "math", str(dest)).exit_code == 0
    assert "ok: task math v3" in run("probes", "validate", str(dest)).output
    dest.write_text(dest.read_text().replace("num_prompts: 16", "num_prompts: many") + "bogus: 1\n")
    r = CliRunner().invoke(cli, ["probes", "validate", str(dest)])
    assert r.exit_code == 2
    assert "unknown key 'bogus'" in r.output and "num_prompts expects int" in r.output


def test_an_installed_wheel_finds_its_recipes_and_predictor(tmp_path):
    """A plain (non-editable) install has no probes/ beside the package: recipes and the shipped predictor come from
    the wheel's layerscout/_probes/. Unpacking the wheel is what pip does for a pure-Python one."""
    import shutil
    import zipfile
    from pathlib import Path

    repo, src = Path(__file__).resolve().parent.parent, tmp_path / "src"  # a copy: the build writes build/ beside it
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "layerscout", "probes"):
        (shutil.copytree if (repo / name).is_dir() else shutil.copy)(repo / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    wheel, = (tmp_path / "dist").glob("layerscout-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = ("import layerscout, json; from layerscout.recipes import builtin_recipes, load_recipe; "
            "from layerscout.config import ProbeConfig; ProbeConfig(); "
            "print(json.dumps([layerscout.__file__, sorted(builtin_recipes()), load_recipe('math').task]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert proc.returncode == 0, proc.stderr
    where, recipes, task = json.loads(proc.stdout)
    assert where.startswith(str(tmp_path / "site")) and "math" in recipes and task == "math"


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
    assert json.loads((out / "ranking.json").read_text()) == record["ranking"]  # the run dir keeps its ranking
    assert record["ranking_override"] is None


def test_verbose_and_log_file(organism_path, tmp_path):
    log = tmp_path / "run.log"
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--layers", "1", *TRAIN_FAST, "--verbose",
                                 "--log-file", str(log), "--output", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["steps"] == 1  # logs never reach stdout
    assert "INFO layerscout.training: training blocks [1] for 1 steps (grpo)" in r.stderr
    text = log.read_text()
    assert "INFO layerscout.training: training blocks [1]" in text
    assert "DEBUG layerscout.training: step 1: {" in text and '"reward":' in text  # TRL's per-step metrics
    r = CliRunner().invoke(cli, ["rank", "--log-file", "/proc/forbidden/x.log"])
    assert r.exit_code == 2 and "cannot write to /proc/forbidden" in r.output


@pytest.mark.parametrize("cmd", [["rank"], ["train"], ["eval"], ["calibrate"]], ids=" ".join)
def test_shared_flags_are_on_every_command(cmd):
    text = run(*cmd, "--help").output
    for flag in ("--task", "--dataset", "--reward", "--seed", "--device", "--dtype", "--json", "--quiet", "--verbose",
                 "--log-file"):
        assert flag in text, (cmd, flag)
    assert ("--algo" in text) == (cmd != ["eval"])  # eval trains nothing
    assert "--reward my_reward.py:score" in text  # an example of the user's own task


CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def test_setup_and_readme_install_the_cpu_torch_build():
    """PyPI's Linux torch 2.13.0 is the CUDA build: both install torch from PyTorch's CPU index."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for path in (root / ".ci" / "setup", root / "README.md"):
        installs = [line for line in path.read_text().splitlines()
                    if "pip install" in line and "torch==" in line and not line.lstrip().startswith("#")]
        assert installs and all(CPU_INDEX in line for line in installs), (path, installs)


@pytest.mark.slow
def test_the_cpu_torch_install_command_resolves_to_a_cpu_build(tmp_path):
    """Resolves (without installing) the setup's torch command: here it takes a local +cpu wheel, elsewhere the
    CPU index serves one."""
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
                        "torch==2.13.0", *CPU_INDEX.split()], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Would install torch-2.13.0+cpu" in r.stdout


def test_records_name_recipes_and_commands_without_absolute_paths(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    from layerscout import records
    from layerscout.recipes import load_recipe

    pkg, root = Path(records.__file__).resolve().parent, Path(__file__).resolve().parent.parent
    assert records.command([str(pkg / "calibrate.py"), "s.json", "--shard", "0/2"]) == \
        "python -m layerscout.calibrate s.json --shard 0/2"
    assert records.command([str(pkg / "cli.py"), "rank", "--json"]) == "layerscout rank --json"
    assert load_recipe("math").name == "math" and load_recipe(str(root / "probes" / "math.yaml")).name == "math"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text((root / "probes" / "math.yaml").read_text())
    assert load_recipe(str(tmp_path / "mine.yaml")).name == "mine.yaml"  # relative to the working dir
    for path in (root / "calibration").rglob("*.json"):  # the committed records too
        assert not re.search(r'"(recipe|command)": "/', path.read_text()), path

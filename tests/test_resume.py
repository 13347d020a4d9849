"""Runs that never lie, with real processes and real signals: `layerscout train` SIGKILLed mid-run and during a
checkpoint save, then resumed; a finished run left untouched; another run's settings refused; a calibrate job
killed mid-run resumes from its checkpoint; stdout under --json is exactly one JSON document.
Run: pytest tests/test_resume.py   (about 90 s on 2 CPU cores: each `layerscout` process pays the imports)"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--layers", "2", "--steps", "8", "-o", "save_steps=1", "-o", "eval_prompts=8", "-o", "prompts_per_step=4",
        "-o", "max_completion_length=16"]


def env():
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1"}


def layerscout(*args):
    return [sys.executable, "-m", "layerscout.cli", *map(str, args)]


def run(*args):
    return subprocess.run(layerscout(*args), capture_output=True, text=True, env=env(), timeout=300)


def tree(path):
    return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


def same_weights(a, b):
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)


def newest(out):
    found = [(int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*")]
    return max(found)[1] if found else None


def kill_when(proc, ready, timeout=600):
    """SIGKILL `proc` as soon as `ready()` holds (polled every 10 ms; the timeout is a deadline only, for a loaded
    machine), and check that the kill, not an exit, ended it."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]


@pytest.fixture(scope="module")
def reference(organism_path, tmp_path_factory):
    """An uninterrupted run with progress bars on, through the CLI with --json."""
    out = tmp_path_factory.mktemp("reference") / "run"
    r = run("train", organism_path, *ARGS, "--output", out, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_json_stdout_is_one_document_while_trl_logs_go_to_stderr(reference):
    out, r = reference
    record = json.loads(r.stdout)  # fails if TRL's per-step log dicts or progress reach stdout
    assert record["steps"] == 8 and record["layers"] == [2] and record["output_dir"] == str(out)
    assert "'loss'" in r.stderr or "'reward'" in r.stderr  # TRL's log dicts are still shown, on stderr


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(organism_path, reference, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(layerscout("train", organism_path, *ARGS, "--output", out, "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    kill_when(proc, (out / "checkpoint-3" / "trainer_state.json").exists)
    assert not (out / "train_report.json").exists()  # killed mid-run, not after it
    r = run("train", organism_path, *ARGS, "--output", out, "--resume", "--json", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads(r.stdout)
    assert int(Path(record["resumed_from"]).name.split("-")[1]) >= 3 and record["steps"] == 8
    assert [p["step"] for p in record["reward_curve"]] == list(range(1, 9))
    assert same_weights(out, reference[0])


def test_sigkill_during_a_checkpoint_save_then_resume_skips_the_torn_checkpoint(organism_path, reference, tmp_path):
    """SIGSTOP the run the moment its newest checkpoint dir exists without trainer_state.json (TRL writes that
    last), confirm it is still torn, then SIGKILL: a real kill in the middle of a real save."""
    out = tmp_path / "run"
    proc = subprocess.Popen(layerscout("train", organism_path, *ARGS, "--output", out, "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    torn, deadline = None, time.time() + 600  # a deadline only: the kill comes when the state appears
    while torn is None and proc.poll() is None and time.time() < deadline:
        last = newest(out)
        if last is not None and last.name != "checkpoint-1" and not (last / "trainer_state.json").exists():
            proc.send_signal(signal.SIGSTOP)
            if last.is_dir() and not (last / "trainer_state.json").exists():
                torn = last
            else:
                proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torn is not None, "the kill never landed inside a save: " + proc.stderr.read().decode()[-2000:]
    step = int(torn.name.split("-")[1])
    r = run("train", organism_path, *ARGS, "--output", out, "--resume", "--json", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads(r.stdout)
    assert record["resumed_from"] == str(out / f"checkpoint-{step - 1}") and record["steps"] == 8
    assert f"skipping {torn}" in r.stderr
    assert same_weights(out, reference[0])


def test_resuming_a_finished_run_through_the_cli_touches_nothing(organism_path, reference):
    out, first = reference
    before = tree(out)
    r = run("train", organism_path, *ARGS, "--output", out, "--resume", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{out}: this run finished before (8 steps); left untouched" in r.stderr
    assert json.loads(r.stdout)["final_score"] == json.loads(first.stdout)["final_score"]
    assert tree(out) == before


@pytest.mark.parametrize("change, named", [(["--layers", "3"], "layers")])  # the rest: test_training.py
def test_resume_with_other_settings_is_refused_in_one_line(organism_path, reference, change, named):
    out, _ = reference
    before = tree(out)
    args = [a for a in ARGS]
    if change[0] == "--layers":
        args[1] = change[1]
    else:
        args += change
    r = run("train", organism_path, *args, "--output", out, "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {out} holds a run with other settings: {named}")
    assert tree(out) == before


def test_a_killed_calibrate_job_resumes_from_its_checkpoint(tmp_path):
    """With checkpoints on (rl.save_steps), a job killed mid-run continues from its last complete checkpoint."""
    from layerscout.calibrate import load_config, run_calibration
    from layerscout.organisms import build_model, build_tokenizer

    model = tmp_path / "tiny"
    tok = build_tokenizer()
    build_model("qwen3", 2, len(tok), seed=0, hidden_size=32).save_pretrained(model)
    tok.save_pretrained(model)
    out = tmp_path / "sweep"
    rl = dict(train_prompts=8, prompts_per_step=2, num_generations=2, max_completion_length=4, eval_prompts=4,
              save_steps=1)
    cfg = tmp_path / "calibration.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(model), "seeds": [0], "layers": "0", "steps": 6, "rl": rl,
                                   "output": str(out), "min_gain_se": 0.0}))
    proc = subprocess.Popen(layerscout("calibrate", "--config", cfg, "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    scratch = out / "scratch" / "0" / "full"
    kill_when(proc, (scratch / "checkpoint-2" / "trainer_state.json").exists)
    assert not (out / "runs" / "0" / "full.json").exists()
    result = run_calibration(load_config(cfg), progress=False)
    assert result["ran"] == ["0/full", "0/layer-0"]
    record = json.loads((out / "runs" / "0" / "full.json").read_text())
    assert int(Path(record["resumed_from"]).name.split("-")[1]) >= 2 and record["steps"] == 6
    assert json.loads((out / "runs" / "0" / "layer-0.json").read_text())["resumed_from"] is None

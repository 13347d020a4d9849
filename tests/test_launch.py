"""Several processes on CPU: `accelerate launch` (2 processes, torch.distributed over gloo) runs `layerscout
train` and a calibrate job data-parallel; only the main process writes files and prints the one JSON result.
Run: pytest tests/test_launch.py   (about 40 s on 2 CPU cores)"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")


def launch(*args, port):
    """`accelerate launch --multi_gpu --num_processes 2`: with no GPU, accelerate and torch.distributed fall back
    to CPU processes that talk over gloo."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(port), "-m", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


pytestmark = pytest.mark.skipif(ACCELERATE is None or torch.cuda.is_available(),
                                reason="needs the accelerate CLI; on a GPU machine it would use the GPUs")


def test_train_on_two_cpu_processes(organism_path, tmp_path):
    out = tmp_path / "run"
    r = launch("layerscout.cli", "train", organism_path, "--layers", "2", "--steps", "2", "-o", "save_steps=2",
               "-o", "eval_prompts=8", "-o", "prompts_per_step=4", "-o", "max_completion_length=16", "--json",
               "--quiet", "--output", out, port=29541)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads(r.stdout)  # one document: the second process prints nothing
    assert record["processes"] == 2 and record["steps"] == 2 and record["layers"] == [2]
    args = torch.load(out / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert args.world_size == 2 and args.per_device_train_batch_size == 8  # 4 prompts x 4 completions / 2
    assert sorted(p.name for p in (out / "checkpoint-2").glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    base, trained = load_file(organism_path / "model.safetensors"), load_file(out / "model.safetensors")
    moved = {k for k in base if not torch.equal(base[k], trained[k])}
    assert moved and all(k.startswith("model.layers.2.") for k in moved)


def test_a_calibrate_job_on_two_cpu_processes(tmp_path):
    from layerscout.organisms import build_model, build_tokenizer

    tok = build_tokenizer()
    build_model("qwen3", 2, len(tok), seed=0, hidden_size=32).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    cfg = tmp_path / "calibration.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tmp_path / "tiny"), "seeds": [0], "layers": "0", "steps": 1,
                                   "output": str(tmp_path / "sweep"), "min_gain_se": 0.0,
                                   "rl": dict(train_prompts=8, prompts_per_step=2, num_generations=2,
                                              max_completion_length=4, eval_prompts=4)}))
    r = launch("layerscout.cli", "calibrate", "--config", cfg, "--quiet", "--json", port=29542)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["ran"] == ["0/full", "0/layer-0"]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep" / "runs" / "0").glob("*.json"))]
    assert [r["job"] for r in records] == ["0/full", "0/layer-0"] and all(r["processes"] == 2 for r in records)

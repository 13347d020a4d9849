"""`train --auto-layer --verify K`: the pick rule on hand-computed rewards; K real short TRL runs on the test
organism, all scored on the base's held-out prompts, then the main run on the best block; a real `layerscout`
process SIGKILLed inside the verify phase, then resumed, reruns only the unfinished candidate and ends as an
uninterrupted run; bad K values are one-line errors.
Run: pytest tests/test_verify.py   (about 90 s on 2 CPU cores)"""

import hashlib
import json
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from layerscout.autolayer import verify_summary
from layerscout.cli import cli
from test_resume import env, kill_when, layerscout, run

ORDER = [4, 1, 2, 0, 3, 5]  # the ranking's order: not depth order, so the candidates must come from the ranking
RL = dict(max_steps=2, save_steps=1, eval_prompts=16, eval_samples=2, prompts_per_step=2, max_completion_length=8,
          learning_rate=3e-3)
OPTIONS = [x for k, v in RL.items() if k != "max_steps" for x in ("-o", f"{k}={v}")]


@pytest.mark.parametrize("finals, pick, why", [
    # block 1 beats the top by 0.75 ± 0.25 (3 paired SE)
    ([[0, 0, 1, 0], [1, 1, 1, 1]], 1, "picked block 1 (ranked #2, gain +1.000 ± 0.000): it beat the predicted top "
                                      "block 4 (gain +0.250 ± 0.250) by +0.750 ± 0.250, more than 2 paired SE"),
    # +0.5 ± 0.289 is 1.7 SE: within noise, the ranking's order stands
    ([[0, 0, 1, 0], [1, 0, 1, 1]], 4, "kept the predicted top block 4 (gain +0.250 ± 0.250): no candidate beat it "
                                      "by more than 2 paired SE (best: block 1, gain +0.750 ± 0.250, +0.500 ± 0.289 "
                                      "over it)"),
    ([[1, 0, 1, 0], [1, 0, 1, 0]], 4, "kept the predicted top block 4 (gain +0.500 ± 0.289): no candidate beat it "
                                      "by more than 2 paired SE"),  # a tie
    # two beat the top (0.75 ± 0.25 and 1 ± 0): the higher gain wins
    ([[0, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], 2, "picked block 2 (ranked #3"),
    # equal gains that both beat the top: the ranking's order decides
    ([[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], 1, "picked block 1 (ranked #2"),
    ([[0, 1, 0, 1]], 4, "kept the only candidate, block 4 (gain +0.500 ± 0.289)"),
])
def test_the_pick_needs_a_clear_win_over_the_predicted_top(finals, pick, why):
    result = verify_summary([4, 1, 2][:len(finals)], [0, 0, 0, 0], finals)
    assert result["pick"] == pick and result["matched_prediction"] == (pick == 4)
    assert result["reason"].startswith(why), result["reason"]
    rows = result["candidates"]
    assert [r["predicted_rank"] for r in rows] == list(range(1, len(finals) + 1))
    assert rows[0]["vs_top"] == 0.0 and rows[0]["gain"] == np.mean(finals[0])


def test_margin_zero_picks_any_strictly_better_block():
    assert verify_summary([4, 1], [0, 0, 0, 0], [[0, 0, 1, 0], [1, 0, 1, 1]], margin_se=0)["pick"] == 1
    assert verify_summary([4, 1], [0, 0, 0, 0], [[0, 0, 1, 0], [0, 1, 0, 0]], margin_se=0)["pick"] == 4


@pytest.fixture(scope="module")
def ranking(organism_path, tmp_path_factory):
    """A ranking of the test organism (its fingerprint) in the order ORDER."""
    from layerscout.models import load_model
    from layerscout.ranking import LayerRanking, LayerScore
    from layerscout.records import model_fingerprint

    model, _ = load_model(str(organism_path))
    path = tmp_path_factory.mktemp("ranking") / "ranking.json"
    scores = [LayerScore(k, 1 - i / len(ORDER), i + 1, {}) for i, k in enumerate(ORDER)]
    path.write_text(json.dumps(LayerRanking(model=str(organism_path), task="math", algo="grpo", seed=0, layers=scores,
                                            model_fingerprint=model_fingerprint(model)).to_dict()))
    return path


@pytest.fixture(scope="module")
def verified(organism_path, ranking, tmp_path_factory):
    """An uninterrupted verify run through the library: margin 0, so the pick is the best held-out gain."""
    from layerscout.autolayer import train_auto
    from layerscout.config import RLConfig

    out = tmp_path_factory.mktemp("verified") / "run"
    record = train_auto(str(organism_path), "math", ranking=ranking, top_k=2, verify=3, verify_steps=2, margin_se=0,
                        config=RLConfig(**RL), output_dir=out, progress=False)
    return out, record


def test_verify_runs_the_top_k_briefly_and_trains_the_best(verified):
    from safetensors import safe_open

    out, record = verified
    v = record["verify"]
    assert [c["layer"] for c in v["candidates"]] == ORDER[:3] and v["predicted_top"] == ORDER[0]
    base = json.loads((out / "base_eval.json").read_text())["result"]
    for c in v["candidates"]:  # each candidate: a real 2-step run of its block alone, scored on the base's prompts
        run_dir = out / c["run_dir"]
        report = json.loads((run_dir / "train_report.json").read_text())
        assert report["layers"] == [c["layer"]] and report["steps"] == c["steps"] == 2
        assert report["base_eval"] == base and report["final_eval"]["ids"] == base["ids"]
        assert c["gain"] == pytest.approx(np.mean(report["final_eval"]["per_prompt"]) - np.mean(base["per_prompt"]))
        with safe_open(run_dir / "layer_delta.safetensors", "pt") as f:
            assert {int(k.split(".")[2]) for k in f.keys()} == {c["layer"]}
        # the short run's model is not kept: its report, settings and delta are
        assert sorted(p.name for p in run_dir.iterdir()) == ["layer_delta.safetensors", "run_config.json",
                                                             "train_report.json"]
    best = max(v["candidates"], key=lambda c: (c["gain"], -c["predicted_rank"]))
    assert v["pick"] == best["layer"] and v["matched_prediction"] == (best["layer"] == ORDER[0])
    # --top-k 2: the pick, then the ranking's next block
    assert record["layers"] == [v["pick"], next(k for k in ORDER if k != v["pick"])]
    assert record["steps"] == 2 and record["base_eval"] == base  # one base eval for every run
    cost = v["cost"]
    assert cost["verify_steps"] == 6 and cost["main_steps"] == 2 and cost["steps_ratio"] == 3
    assert cost["verify_seconds"] == pytest.approx(sum(c["seconds"] for c in v["candidates"]), abs=1e-2)
    assert cost["main_seconds"] == record["wall_seconds"] and cost["seconds_ratio"] > 0
    assert json.loads((out / "train_report.json").read_text())["verify"] == v
    assert json.loads((out / "verify" / "verify.json").read_text())["result"]["pick"] == v["pick"]


def digest(path):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(path.iterdir())}


def test_a_killed_verify_phase_resumes_without_rerunning_finished_candidates(organism_path, ranking, verified,
                                                                              tmp_path):
    out = tmp_path / "run"

    def train(k=3):
        return ["train", str(organism_path), "--auto-layer", "--ranking", str(ranking), "--steps", "2", "--verify",
                str(k), "--verify-steps", "2", *OPTIONS, "--output", str(out)]

    args = train()
    proc = subprocess.Popen(layerscout(*args, "--quiet"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    second = out / "verify" / f"layer-{ORDER[1]}"
    kill_when(proc, (second / "checkpoint-1" / "trainer_state.json").exists, timeout=240)
    first = out / "verify" / f"layer-{ORDER[0]}"
    assert (first / "train_report.json").exists() and not (second / "train_report.json").exists()
    before = digest(first)

    # the dir is not taken over by a new run, nor resumed with other verify settings
    for flags, message in [(args, f"{out} already holds a verify phase"),
                           (train(k=2) + ["--resume"], f"{out} holds a run with another verify phase (verify 3, "
                                                       "verify_steps 2, margin_se 2.0)")]:
        r = CliRunner().invoke(cli, flags)
        assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith(f"error: {message}"), r.output

    r = run(*args, "--resume", "--json", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads(r.stdout)
    assert f"{first}: this run finished before (2 steps); left untouched" in r.stderr
    assert digest(first) == before  # the finished candidate was not rerun
    resumed = json.loads((second / "train_report.json").read_text())["resumed_from"]
    assert resumed == str(second / "checkpoint-1")  # the killed one continued from its checkpoint
    # every candidate scores as in the uninterrupted run, prompt by prompt
    ref = verified[1]["verify"]["candidates"]
    assert [(c["layer"], c["gain"], c["se"]) for c in record["verify"]["candidates"]] == \
        [(c["layer"], c["gain"], c["se"]) for c in ref]
    assert record["layers"] == [record["verify"]["pick"]] and record["verify"]["cost"]["main_seconds"] > 0


@pytest.mark.parametrize("args, message", [
    (["--layers", "1", "--verify", "2"], "--ranking, --top-k, --force and --verify only apply with --auto-layer"),
    (["--auto-layer", "--verify-steps", "2"], "--verify-steps only applies with --verify"),
    (["--auto-layer", "--verify", "0"], "verify must be >= 1 (blocks to try); got 0"),
    (["--auto-layer", "--verify", "2", "--steps", "4", "--verify-steps", "5"],
     "verify_steps must be in 1..4 (the main run's max_steps); got 5"),
    (["--auto-layer", "--verify", "2", "-o", "eval_prompts=1"],
     "verify compares held-out gains prompt by prompt: eval_prompts must be >= 2; got 1"),
])
def test_bad_verify_values_are_one_line_errors_before_any_model_loads(args, message, tmp_path):
    r = CliRunner().invoke(cli, ["train", "/no/such/model", *args, "--output", str(tmp_path / "run")])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.strip().splitlines()[-1] == f"error: {message}"


def test_verify_beyond_the_depth_fails_before_any_run(organism_path, ranking, tmp_path):
    r = CliRunner().invoke(cli, ["train", str(organism_path), "--auto-layer", "--ranking", str(ranking), "--verify",
                                 "7", "--output", str(tmp_path / "run")])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1] == \
        "error: verify must be in 1..6 (the model's depth); got 7"
    assert not (tmp_path / "run" / "verify").exists() and not (tmp_path / "run" / "run_config.json").exists()

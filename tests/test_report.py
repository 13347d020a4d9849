"""Validation report and cross-sweep comparison on a hand-written 6-layer calibration dir (records in the real
format with per-prompt rewards on 20 prompts, C known exactly). Run: pytest tests/test_report.py   (about 10 s)"""

import json
import math

import numpy as np
import pytest

from layerscout.errors import LayerscoutError
from layerscout.ranking import LayerRanking, LayerScore
from layerscout.records import write_json
from layerscout.report import bars_figure, compare, validate

MODEL = "/cache/organisms/qwen3-L6-math-s0-abcd1234"
C = [0.5, 1.0, 1.25, 0.75, 0.25, 0.0]  # true contribution per block, both seeds
S_BASE, S_FULL = 0.2, 0.6
N = 20  # held-out prompts: S * N of them solved, the first ones
SCORES = [0.35, 0.5, 0.4, 0.3, 0.2, 0.0]  # predicted order 1, 2, 0, 3, 4, 5; true order 2, 1, 3, 0, 4, 5


def write_truth(directory, c=C, seeds=(0, 1), skip=("1/layer-5",), model=MODEL, fingerprint=None):
    """A sweep dir as calibrate writes it: sweep.json plus runs/<seed>/<job>.json."""
    n = len(c)
    planned = [{"index": j, "id": f"{s}/{name}", "seed": s, "name": name, "layers": layers}
               for j, (s, name, layers) in enumerate(
                   (s, name, layers) for s in seeds
                   for name, layers in [("full", None)] + [(f"layer-{k}", [k]) for k in range(n)])]
    write_json(directory / "sweep.json", {"config": {"model": model, "task": "math", "algo": "grpo"},
                                          "n_layers": n, "jobs": planned})
    for job in planned:
        if job["id"] in skip:
            continue
        final = S_FULL if job["layers"] is None else S_BASE + (S_FULL - S_BASE) * c[job["layers"][0]]
        write_json(directory / "runs" / str(job["seed"]) / f"{job['name']}.json", {
            "job": job["id"], "kind": "full" if job["layers"] is None else "layers", "model": model,
            **({"model_fingerprint": fingerprint} if fingerprint else {}),
            "num_layers": n, "layers": job["layers"], "task": "math", "task_version": 1, "algo": "grpo",
            "seed": job["seed"], "steps": 5, "base_score": S_BASE, "final_score": final,
            "base_eval": _eval(S_BASE), "final_eval": _eval(final),
            "reward_curve": [{"step": 1, "reward": 0.1}], "wall_seconds": 1.0, "versions": {}, "git_commit": None,
            "command": "pytest", "job_command": "python -m layerscout.calibrate x --shard 0/1"})
    return directory


def _eval(score):
    solved = round(score * N)
    return {"score": score, "n": N, "num_samples": 1, "greedy": True, "ids": [f"q{i}" for i in range(N)],
            "per_prompt": [1.0] * solved + [0.0] * (N - solved)}


def ranking(scores=SCORES, model=MODEL, task_version=1):
    layers = [LayerScore(k, s, 0, {"grad_norm": C[k], "depth_prior": 0.0}) for k, s in enumerate(scores)]
    for rank, layer in enumerate(sorted(layers, key=lambda x: (-x.score, x.index)), 1):
        layer.rank = rank
    return LayerRanking(model=model, task="math", algo="grpo", seed=0, layers=layers,
                        config={"task_version": task_version})


@pytest.fixture
def truth(tmp_path):
    return write_truth(tmp_path / "truth")


@pytest.fixture
def ranking_file(tmp_path):
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(ranking().to_dict()))
    return path


def test_metrics_match_hand_computation(truth, ranking_file, tmp_path):
    report = validate([ranking_file], truth, tmp_path / "out", k=3, n_boot=200)
    row = report["rows"][0]
    assert row["name"] == "probe" and row["kind"] == "ranking" and row["note"] is None
    m = {name: cell["value"] for name, cell in row["metrics"].items()}
    assert m["spearman"] == pytest.approx(1 - 6 * 4 / (6 * 35))  # rank differences 1, 1, -1, -1, 0, 0
    assert m["kendall"] == pytest.approx(11 / 15)  # 2 discordant pairs of 15
    assert m["top1_recovered"] == pytest.approx(1.0 / 1.25)  # predicted best: layer 1
    assert m["topk_overlap"] == pytest.approx(2 / 3)  # {1, 2, 0} vs {2, 1, 3}
    assert m["top1_regret"] == pytest.approx(0.25)  # C(2) - C(1)
    dcg = 1.0 + 1.25 / math.log2(3) + 0.5 / 2
    idcg = 1.25 + 1.0 / math.log2(3) + 0.75 / 2
    assert m["ndcg"] == pytest.approx(dcg / idcg)
    for cell in row["metrics"].values():
        assert cell["low"] <= cell["high"]
    assert report["true_contribution"] == pytest.approx(C)


def test_baselines_and_signals(truth, ranking_file, tmp_path):
    rows = {r["name"]: r for r in validate([ranking_file], truth, tmp_path / "out", n_boot=100)["rows"]}
    assert rows["grad_norm (probe)"]["metrics"]["spearman"]["value"] == pytest.approx(1.0)
    assert rows["depth_prior (probe)"]["metrics"]["spearman"]["value"] is None  # constant: no ranking
    shallow = rows["shallower first"]["metrics"]["spearman"]["value"]
    assert shallow == pytest.approx(1 - 6 * 14 / 210)  # ranks 6,5,4,3,2,1 vs true 3,5,6,4,2,1: sum d^2 = 14
    rand = rows["random ranking (expectation)"]["metrics"]
    assert abs(rand["spearman"]["value"]) < 0.1 and rand["topk_overlap"]["value"] == pytest.approx(0.5, abs=0.1)
    assert "depth prior (middle)" in rows


def test_all_outputs_exist(truth, ranking_file, tmp_path):
    out = tmp_path / "out"
    report = validate([ranking_file], truth, out, n_boot=50)
    assert {"probe_bars.png", "probe_scatter.png", "probe_ranks.png"} == set(report["plots"])
    for name in ["report.md", "report.html", "report.json", *report["plots"]]:
        assert (out / name).stat().st_size > 0, name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and 'src="http' not in page
    assert json.loads((out / "report.json").read_text())["rows"][0]["name"] == "probe"
    md = (out / "report.md").read_text()
    assert "| probe | ranking | 0.89 [" in md
    # verdict first: both seeds agree exactly (ceiling 1), so 0.89 is 89 % of it. The middle prior ranks
    # 1.5, 3.5, 5.5, 5.5, 3.5, 1.5 against true ranks 3, 5, 6, 4, 2, 1: 12 / sqrt(16 * 17.5) = 0.72
    assert md.splitlines()[2] == ("**Verdict:** probe: beats both free priors (Spearman 0.89 vs middle 0.72, "
                                  "shallower-first 0.60), 89 % of the noise ceiling 1.00; top-1 regret 0.25")
    assert "noise ceiling: sqrt of its Spearman-Brown reliability" in md and "*Predicted rank (x) against" in md
    assert "C on the even-numbered prompts against C on the odd ones: 1.00 / 1.00 (same seed / across seeds)" in md
    # blocks solve 4, 8, 10, 6, 2, 0 more of the 20 prompts: m flips give z = (m / 20) / sqrt(m (20 - m) / 380 / 20),
    # 2.18, 3.56, 4.36, 2.85, 1.45, 0; seed 1 lacks the last block
    assert ("single-block runs' gain per seed, median over blocks (paired SE): seed 0: 2.52 (best 4.36), seed 1: "
            "2.85 (best 4.36)") in md
    assert page.count("<figcaption>") == 3 and "Verdict:" in page


def test_missing_runs_are_listed(truth, ranking_file, tmp_path):
    report = validate([ranking_file], truth, tmp_path / "out", n_boot=50)
    assert report["truth"]["missing"] == ["1/layer-5"] and report["blocks"] == [0, 1, 2, 3, 4, 5]
    assert report["truth"]["seed_spearman"] == pytest.approx(1.0)  # over the 5 blocks both seeds have
    assert "missing runs (1): 1/layer-5" in (tmp_path / "out" / "report.md").read_text()


def test_stale_task_version(truth, tmp_path):
    report = validate([ranking(task_version=2)], truth, tmp_path / "out", n_boot=50)
    assert report["rows"][0]["note"] == "stale: ranking made under task version 2, truth rows recorded under [1]"
    assert report["rows"][0]["name"] == "ranking0"


def test_other_depth_or_model_is_an_error(truth, tmp_path):
    with pytest.raises(LayerscoutError, match=r"ranking ranking0 is for .*L6.* \(5 layers\) but the truth in .* "
                                              r"is for .*L6.* \(6 layers\)"):
        validate([ranking(scores=SCORES[:5])], truth, tmp_path / "out")
    with pytest.raises(LayerscoutError, match="is for Qwen/Qwen3-4B .* but the truth"):
        validate([ranking(model="Qwen/Qwen3-4B")], truth, tmp_path / "out")


def test_a_ranking_of_other_weights_under_the_same_name_is_an_error(tmp_path):
    """An organism rebuilt on another CPU keeps its cache path, not its weights."""
    fp = {"config": "c0ffee", "params": 10, "sample": [0.1, -0.2]}
    truth = write_truth(tmp_path / "truth", fingerprint=fp)
    other, same = ranking(), ranking()
    other.model_fingerprint, same.model_fingerprint = {**fp, "sample": [0.1, -0.25]}, fp
    with pytest.raises(LayerscoutError, match=r"ranking ranking0 was made on another model than the truth in .* "
                                              r"\(the weights differ\)"):
        validate([other], truth, tmp_path / "out", n_boot=10)
    assert validate([same], truth, tmp_path / "out", n_boot=10)["rows"][0]["name"] == "ranking0"
    assert validate([other], write_truth(tmp_path / "old"), tmp_path / "out", n_boot=10)  # no fingerprint: unchecked


def test_undefined_truth_is_an_error(tmp_path):
    directory = write_truth(tmp_path / "t", skip=("0/full", "1/full"))
    with pytest.raises(LayerscoutError, match="C is defined for 0 block"):
        validate([ranking()], directory, tmp_path / "out")


def test_compare(truth, tmp_path):
    other = write_truth(tmp_path / "reversed", c=[1.25 - x for x in C], skip=())
    shallow = write_truth(tmp_path / "shallow", c=C[:4])
    result = compare([truth, other, shallow], tmp_path / "cmp")
    assert result["labels"] == ["truth", "reversed", "shallow"]
    assert [pytest.approx(row[:2]) for row in result["matrix"][:2]] == [[1.0, -1.0], [-1.0, 1.0]]
    assert result["matrix"][0][2] is None  # 6 vs 4 layers: not comparable
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| truth | 1.00 | -1.00 | – |" in md
    row = result["sweeps"][0]
    # best blocks 2, 1, 3 of 6 sit at 40, 20, 60 % depth; block 5 is the worst
    assert row["best blocks (% of depth)"] == "2, 1, 3 (20–60 %); worst 5 (100 %)"
    assert row["seed Spearman"] == "1.00" and row["seeds"] == "2 (1 run to go)" and row["shallower first"] == "0.60"
    # the first prompts are solved: blocks solve 8, 12, 14, 10, 6 of 20, half of them even-numbered, so C ranks
    # the blocks alike on either half
    assert row["split-half (same seed / across)"] == "1.00 / 1.00"
    # gain 0.4 on 20 prompts, d = 1 on 8 of them: se = sqrt(8/20 * 12/20 * 20/19) / sqrt(20)
    assert row["full-run gain (paired SE)"] == "+0.400…+0.400 (3.6–3.6 SE)"
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["labels"] == ["truth", "reversed", "shallow"]


def test_compare_says_which_seeds_the_c_vector_stands_on(tmp_path):
    """A sweep still running, or one with a gated seed, must not read as a full 2-seed sweep."""
    running = write_truth(tmp_path / "running", skip=tuple(f"1/layer-{k}" for k in range(6)))
    gated = write_truth(tmp_path / "gated", skip=tuple(f"1/layer-{k}" for k in range(6)))
    full = gated / "runs" / "1" / "full.json"
    record = json.loads(full.read_text())
    record["final_eval"], record["final_score"] = _eval(0.35), 0.35  # 7 of 20 solved against 4: gain 0.15
    write_json(full, record)
    flat = write_truth(tmp_path / "flat", skip=())
    for k in range(6):  # seed 1's full run trained, but no block solved more than one extra prompt
        block = flat / "runs" / "1" / f"layer-{k}.json"
        record = json.loads(block.read_text())
        record["final_eval"], record["final_score"] = _eval(0.2 + 0.05 * (k % 2)), 0.2 + 0.05 * (k % 2)
        write_json(block, record)
    rows = compare([running, gated, write_truth(tmp_path / "done", skip=()), flat])["sweeps"]
    # gated: d = 1 on 3 of 20 prompts, se = sqrt(3/20 * 17/20 * 20/19) / sqrt(20) = 0.0819, z = 1.83 < 3;
    # flat: d = 1 on one prompt, se = sqrt(1/20 * 19/20 * 20/19) / sqrt(20) = 0.05, z = 1.0 < 3
    assert [row["seeds"] for row in rows] == ["1 of 2 (6 runs to go)", "1 of 2 (seed 1 gated at 1.8 SE)", "2",
                                              "2 (seed 1 flat: best block 1.0 SE)"]


def write_parity_truth(directory):
    """Each block solves extra prompts of one parity only, the same in both seeds: the seeds agree exactly on the
    20 prompts, while the blocks that gain on the even prompts are the ones that gain nothing on the odd ones."""
    sweep = write_truth(directory, skip=())
    extra = {0: [4], 1: [4, 6, 8], 2: [4, 6, 8, 10, 12], 3: [5, 7], 4: [5, 7, 9, 11], 5: [5, 7, 9, 11, 13, 15]}
    for seed in (0, 1):
        for k, solved in extra.items():
            path = sweep / "runs" / str(seed) / f"layer-{k}.json"
            record = json.loads(path.read_text())
            per_prompt = [1.0 if i < 4 or i in solved else 0.0 for i in range(N)]   # the base solves the first 4
            record["final_eval"] = {**_eval(S_BASE), "per_prompt": per_prompt, "score": sum(per_prompt) / N}
            record["final_score"] = sum(per_prompt) / N
            write_json(path, record)
    return sweep


def test_compare_shows_seeds_that_agree_only_on_their_prompt_set(tmp_path):
    row = compare([write_parity_truth(tmp_path / "parity")])["sweeps"][0]
    # C on even prompts ranks the blocks 4, 5, 6, 2, 2, 2; on odd ones 2, 2, 2, 4, 5, 6: Spearman -13.5 / 15.5
    assert row["seed Spearman"] == "1.00" and row["split-half (same seed / across)"] == "-0.87 / -0.87"


def test_the_verdict_warns_when_the_truth_does_not_hold_on_other_prompts(tmp_path, ranking_file):
    report = validate([ranking_file], write_parity_truth(tmp_path / "parity"), tmp_path / "out", n_boot=20)
    assert report["verdict"].endswith("; but the truth's own ranking holds at only -0.87 from the even- to the "
                                      "odd-numbered prompts, so these numbers depend on which prompts were scored")
    steady = validate([ranking_file], write_truth(tmp_path / "steady"), tmp_path / "out2", n_boot=20)
    assert "holds at only" not in steady["verdict"]


def test_compare_without_output_writes_nothing(truth, tmp_path, monkeypatch):
    other = write_truth(tmp_path / "reversed", c=[1.25 - x for x in C], skip=())
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = compare([truth, other])
    assert "| truth | 1.00 | -1.00 |" in result["markdown"] and sorted(tmp_path.rglob("*")) == before


def test_the_constant_answer_score_is_stated(truth, ranking_file, tmp_path):
    assert "a constant answer" not in (validate([ranking_file], truth, tmp_path / "plain", n_boot=50)
                                       and (tmp_path / "plain" / "report.md").read_text())
    for path in truth.glob("runs/*/*.json"):
        record = json.loads(path.read_text())
        record["base_eval"]["constant_answer"] = {"answer": "1", "score": 0.77}
        write_json(path, record)
    report = validate([ranking_file], truth, tmp_path / "out", n_boot=50)
    assert report["truth"]["constant_answer"] == {"answer": "1", "score": 0.77}
    assert "- a constant answer, '1' to every prompt, scores 0.77" in (tmp_path / "out" / "report.md").read_text()


def test_the_bars_plot_shows_small_contributions():
    """SmolLM2's C of 0.02-0.06 sat flat on the axis under a C = 1 line (calibration/reports)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    small = bars_figure(plt, "r", [0, 1, 2], np.array([0.03, 0.06, 0.02]), np.array([0.01, 0.02, 0.01]), np.ones(3))
    assert small.axes[0].get_ylim()[1] < 0.2
    large = bars_figure(plt, "r", [0, 1, 2], np.array([0.5, 0.8, 0.3]), np.zeros(3), np.ones(3))
    assert large.axes[0].get_ylim()[1] > 1.0  # the C = 1 line is in view
    plt.close("all")

"""The fitted predictor: the scikit-learn estimator contract, within-model normalisation by hand, and model
choice by leave-one-model-out on synthetic sweeps where one signal carries C and the others are noise.
Run: pytest tests/test_predictor.py   (about 20 s)"""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut
from sklearn.utils.estimator_checks import parametrize_with_checks

from layerscout.errors import LayerscoutError
from layerscout.predictor import (Candidate, FittedPredictor, LayerPredictor, Sweep, block_features, candidates,
                                  dataset, fit_predictor, load_predictor, lomo_scores, nested_lomo,
                                  normalise_within, select)


@parametrize_with_checks([LayerPredictor(), LayerPredictor(kind="forest", random_state=0)])
def test_sklearn_contract(estimator, check):
    check(estimator)


def test_normalise_within_by_hand():
    assert normalise_within([3, 1, 2]).tolist() == [1.0, 0.0, 0.5]
    assert normalise_within([1, 1, 4], "rank").tolist() == [0.25, 0.25, 1.0]          # ties averaged
    np.testing.assert_allclose(normalise_within([1, 2, 3], "z"), [-1.224745, 0.0, 1.224745], atol=1e-6)
    assert normalise_within([2, 2]).tolist() == [0.5, 0.5] and normalise_within([2, np.nan], "z").tolist() == [0, 0]
    with pytest.raises(LayerscoutError, match="normalise must be one of rank, z"):
        normalise_within([1, 2], "minmax")


def test_block_features_adds_relative_depth():
    X = block_features({"a": [5.0, 1.0, 3.0], "b": [0.0, 0.0, 0.0]}, ["a", "b"])
    np.testing.assert_allclose(X, [[1.0, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.5, 1.0]])
    with pytest.raises(LayerscoutError, match="did not compute c"):
        block_features({"a": [1.0]}, ["c"])


def synthetic(n_models=4, seed=0):
    """Models of 8-16 blocks: C = good + small noise; `bad` is noise; depth alone says nothing."""
    rng = np.random.default_rng(seed)
    sweeps = []
    for m in range(n_models):
        n = int(rng.integers(8, 17))
        good = rng.normal(size=n) * (1 + m)            # scale differs by model: normalisation must absorb it
        c = 0.5 + 0.3 * good / good.std() + rng.normal(scale=0.05, size=n)
        c[0] = np.nan                                    # an undefined block is skipped
        sweeps.append(Sweep(f"sweep{m}", f"model{m}", n, {"good": good, "bad": rng.normal(size=n)}, c, 0.9))
    return sweeps


def test_dataset_groups_by_model_and_skips_undefined_blocks():
    sweeps = synthetic()
    X, y, groups = dataset(sweeps, ["good"])
    assert X.shape == (sum(s.n_layers - 1 for s in sweeps), 2) and len(y) == len(groups)
    assert sorted(set(groups)) == [f"model{m}" for m in range(4)]
    assert y.min() == 0.0 and y.max() == 1.0


def test_leave_one_model_out_choice_finds_the_informative_signal():
    sweeps = synthetic()
    scores = lomo_scores(sweeps, Candidate(("good",), kind="ridge"))
    assert set(scores) == {s.name for s in sweeps} and min(scores.values()) > 0.8
    assert max(lomo_scores(sweeps, Candidate(("bad",), kind="ridge")).values()) < 0.8
    choice, table = select(sweeps, candidates(["good", "bad"], forest=False))
    assert "good" in choice.signals and "bad" not in choice.signals
    assert choice.kind == "single"   # a fit is not better than the signal alone here: the simplest wins
    held_out = nested_lomo(sweeps, candidates(["good", "bad"], forest=False))
    assert set(held_out) == {s.name for s in sweeps} and all("good" in v["choice"] for v in held_out.values())


def test_grouped_cv_and_clone_work_unchanged():
    X, y, groups = dataset(synthetic(), ["good", "bad"])
    search = GridSearchCV(LayerPredictor(), {"alpha": [0.1, 10.0]}, cv=LeaveOneGroupOut())
    search.fit(X, y, groups=groups)
    assert search.best_estimator_.coef_[0] > abs(search.best_estimator_.coef_[1])   # good outweighs bad
    assert clone(LayerPredictor(alpha=3.0)).get_params()["alpha"] == 3.0


def test_json_round_trip_predicts_the_same(tmp_path):
    sweeps = synthetic()
    fitted = Candidate(("good", "bad"), "z", "ridge", 1.0).fit(sweeps)
    fitted.provenance = {"sweeps": [s.name for s in sweeps]}
    path = tmp_path / "p.json"
    import json
    path.write_text(json.dumps(fitted.to_dict()))
    again = FittedPredictor.load(path)
    np.testing.assert_allclose(again.predict(sweeps[0].signals), fitted.predict(sweeps[0].signals))
    assert again.provenance["sweeps"][0] == "sweep0" and again.to_dict()["feature_names"] == ["good", "bad",
                                                                                              "relative_depth"]
    with pytest.raises(LayerscoutError, match="not shipped as data"):
        Candidate(("good",), kind="forest").fit(sweeps).to_dict()
    assert load_predictor(str(path)) is load_predictor(str(path))  # parsed once per file version
    path.write_text('{"format": "x"}')
    with pytest.raises(LayerscoutError, match="not a layerscout predictor"):
        FittedPredictor.load(path)
    with pytest.raises(LayerscoutError, match="not a layerscout predictor"):
        load_predictor(str(path))  # a rewritten file is read afresh
    with pytest.raises(LayerscoutError, match="no such predictor file"):
        load_predictor(str(tmp_path / "missing.json"))


def write_sweep_dir(directory, sweep):
    """A sweep dir as calibrate + rank leave it: contributions.json and ranking.json."""
    from layerscout.ranking import build_ranking, combine_signals
    from layerscout.records import write_json

    write_json(directory / "contributions.json", {
        "model": sweep.model, "n_layers": sweep.n_layers, "noise_ceiling": sweep.noise_ceiling,
        "layers": [{"index": k, "contribution": None if np.isnan(c) else float(c)}
                   for k, c in enumerate(sweep.contribution)]})
    ranking = build_ranking(dict(sweep.signals), combine_signals(dict(sweep.signals), {"good": 1.0}), model=sweep.model, task="math", algo="grpo", seed=0)
    write_json(directory / "ranking.json", ranking.to_dict())
    return directory


def test_a_sweep_whose_ranking_was_made_on_other_weights_is_refused(tmp_path):
    import json

    from layerscout.predictor import load_sweep
    from layerscout.records import write_json

    d = write_sweep_dir(tmp_path / "s", synthetic()[0])
    fp = {"config": "c0ffee", "params": 10, "sample": [0.1, -0.2]}
    summary = json.loads((d / "contributions.json").read_text())
    write_json(d / "contributions.json", {**summary, "model_fingerprint": fp})
    assert load_sweep(d).n_layers  # a ranking without a fingerprint: nothing to check
    ranking = json.loads((d / "ranking.json").read_text())
    write_json(d / "ranking.json", {**ranking, "model_fingerprint": {**fp, "sample": [0.1, -0.25]}})
    with pytest.raises(LayerscoutError, match=r"the ranking was made on another model than the sweep \(the weights"):
        load_sweep(d)


def test_fit_cli_writes_a_predictor_that_rank_can_load(tmp_path):
    import json

    from click.testing import CliRunner

    from layerscout.cli import cli

    dirs = [str(write_sweep_dir(tmp_path / s.name, s)) for s in synthetic()]
    out = tmp_path / "predictor.json"
    r = CliRunner().invoke(cli, ["fit", *dirs, "--output", str(out), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data == json.loads(out.read_text()) and "good" in data["label"]
    assert [s["dir"] for s in data["provenance"]["sweeps"]] == dirs
    assert min(data["provenance"]["lomo_spearman"].values()) > 0.8
    fitted = FittedPredictor.load(out)
    assert fitted.predict(synthetic()[0].signals).shape == (synthetic()[0].n_layers,)
    with pytest.warns(UserWarning, match=r"rankings share 2 signals.*-o 'signals=\[all\]'"):
        fit_predictor(dirs)  # synthetic rankings: two signals, not the probe's full set
    r = CliRunner().invoke(cli, ["fit", dirs[0], "--output", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "at least 2 models" in r.output
    r = CliRunner().invoke(cli, ["fit", *dirs, "--output", "/proc/nope/p.json"])
    assert r.exit_code == 2 and "cannot write to /proc/nope" in r.output


def test_rank_scores_with_a_fitted_predictor_and_records_it(tmp_path, organism_path):
    """A ridge predictor on two signals the recipe does not list: rank computes them, scores with the predictor
    (its prediction, not score_weights) and records design and version; a bad file fails before any work."""
    import json

    from click.testing import CliRunner

    from layerscout.cli import cli

    sweeps = [Sweep(f"s{i}", f"m{i}", 6, {"grad_snr": rng.random(6), "taylor_saliency": rng.random(6)}, rng.random(6))
              for i, rng in enumerate(np.random.default_rng(s) for s in range(3))]
    fitted = Candidate(("grad_snr", "taylor_saliency"), "rank", "ridge", 1.0).fit(sweeps)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(fitted.to_dict()))
    r = CliRunner().invoke(cli, ["rank", str(organism_path), "--task", "math", "--predictor", str(path), "--json",
                                 "--quiet", "-o", "num_prompts=6", "-o", "max_completion_length=8",
                                 "-o", "signals=[grad_norm]"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    scoring = data["config"]["scoring"]
    assert scoring["rule"] == "predictor" and scoring["version"] == FittedPredictor.load(path).version
    signals = {n: np.array([row["signals"][n] for row in data["layers"]]) for n in ("grad_snr", "taylor_saliency")}
    np.testing.assert_allclose([row["score"] for row in data["layers"]], fitted.predict(signals), rtol=1e-9)
    best = int(np.argmax(fitted.predict(signals)))
    assert data["top_layer"] == best
    r = CliRunner().invoke(cli, ["rank", str(organism_path), "--task", "math", "--predictor", str(tmp_path / "no.json")])
    assert r.exit_code == 2 and "no such predictor file" in r.output


def test_the_shipped_predictor_is_the_default_and_names_its_sweeps(organism, math_task):
    """probes/predictor.json loads, was fitted on sweeps that are in calibration/runs, and scores every ranking
    that does not ask otherwise (the ranking records its design and version)."""
    from pathlib import Path

    from layerscout.config import ProbeConfig
    from layerscout.probe import run_probe

    shipped = load_predictor("default")
    root = Path(__file__).resolve().parent.parent
    assert all((root / s["dir"] / "contributions.json").is_file() for s in shipped.provenance["sweeps"])
    assert len({s["model"] for s in shipped.provenance["sweeps"]}) >= 3
    ranking = run_probe(*organism, math_task, ProbeConfig(num_prompts=6, max_completion_length=8, update_steps=1,
                                                          signals=["grad_norm"]), progress=False)
    assert ranking.config["scoring"] == shipped.describe()
    assert set(shipped.signals) <= set(ranking.layers[0].signals)  # computed although the list named one signal

"""Delta grafting on a calibration sweep's organism, measured in one process: (1) the `graft_gain`/`knockout_loss`
probe pass (short full-parameter GRPO run + grafting) for several seeds, (2) one full-parameter run of the sweep's
own RL settings (its full.json config), then `rank --from-run` on it. Prints each signal's Spearman against the
sweep's true per-block gains (final − base score, mean over the seeds recorded) and the probe pass's wall time as a
ratio to the full run's, with medians.

Run: python benchmarks/graft.py --sweep calibration/runs/qwen3-L12-grpo --output /tmp/graft-bench
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def true_gains(sweep: Path) -> list[float]:
    """Per block, final − base score averaged over the seeds whose layer-k.json exists."""
    gains: dict[int, list[float]] = {}
    for f in sweep.glob("runs/*/layer-*.json"):
        rec = json.loads(f.read_text())
        gains.setdefault(int(f.stem.split("-")[1]), []).append(rec["final_score"] - rec["base_score"])
    return [statistics.mean(gains[k]) for k in range(len(gains))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", required=True, help="calibration sweep dir (sweep.json, runs/<seed>/*.json)")
    ap.add_argument("--model", help="the sweep's model (default: its sweep.json's, relative to the working dir)")
    ap.add_argument("--seeds", type=int, default=3, help="probe-pass seeds (median time reported)")
    ap.add_argument("--graft-steps", type=int, default=5)
    ap.add_argument("-o", "--override", action="append", default=[], help="probe recipe override KEY=VALUE")
    ap.add_argument("--output", required=True, help="dir for the full run and the results JSON")
    args = ap.parse_args()

    from scipy.stats import spearmanr

    from layerscout.config import RLConfig
    from layerscout.graft import rank_from_run
    from layerscout.models import load_model
    from layerscout.probe import run_probe
    from layerscout.recipes import build_task, load_recipe
    from layerscout.records import write_json
    from layerscout.training import train_layers

    sweep, out = Path(args.sweep), Path(args.output)
    model_path = args.model or json.loads((sweep / "sweep.json").read_text())["config"]["model"]
    full_cfg = json.loads((sweep / "runs/0/full.json").read_text())["config"]
    truth = true_gains(sweep)
    rl = RLConfig(**{**full_cfg, "save_steps": 0})
    probe_overrides = [f"graft_steps={args.graft_steps}", f"graft_learning_rate={rl.learning_rate}",
                       f"num_generations={rl.num_generations}", f"max_completion_length={rl.max_completion_length}",
                       "signals=[graft_gain,knockout_loss]", "score_weights={graft_gain: 1.0}", "predictor=null", *args.override]
    results: dict = {"truth": truth, "probe": []}

    def rho(values) -> float:
        return float(spearmanr(values, truth).statistic)

    for seed in range(args.seeds):
        recipe = load_recipe("math", probe_overrides + [f"seed={seed}"])
        model, tok = load_model(model_path)
        t = time.perf_counter()
        ranking = run_probe(model, tok, build_task(recipe), recipe.probe, progress=False)
        seconds = time.perf_counter() - t
        sig = {s: [layer.signals[s] for layer in ranking.layers] for s in ("graft_gain", "knockout_loss")}
        mean = [(a + b) / 2 for a, b in zip(sig["graft_gain"], sig["knockout_loss"])]
        row = {"seed": seed, "seconds": seconds, "cost": ranking.cost, **sig,
               "spearman": {"graft_gain": rho(sig["graft_gain"]), "knockout_loss": rho(sig["knockout_loss"]),
                            "mean": rho(mean)}}
        results["probe"].append(row)
        print(json.dumps({k: row[k] for k in ("seed", "seconds", "spearman")}), flush=True)

    run_dir = out / "full"
    model, tok = load_model(model_path)
    t = time.perf_counter()
    record = train_layers((model, tok), "math", None, rl, output_dir=run_dir, progress=False)
    full_seconds = time.perf_counter() - t
    results["full"] = {"seconds": full_seconds, "step_seconds_median": record["step_seconds_median"],
                       "gain": record["final_score"] - record["base_score"]}
    print(json.dumps(results["full"]), flush=True)
    ranking = rank_from_run(str(run_dir), model_path, "math", overrides=[f"num_generations={rl.num_generations}",
                            f"max_completion_length={rl.max_completion_length}", *args.override], progress=False)
    sig = {s: [layer.signals[s] for layer in ranking.layers] for s in ("graft_gain", "knockout_loss")}
    results["from_run"] = {"cost": ranking.cost, **sig, "spearman": {
        "graft_gain": rho(sig["graft_gain"]), "knockout_loss": rho(sig["knockout_loss"]),
        "mean": rho([layer.score for layer in ranking.layers])}}
    probe_median = statistics.median(r["seconds"] for r in results["probe"])
    results["cost_ratio"] = {"probe_pass_median_seconds": probe_median, "full_run_seconds": full_seconds,
                             "ratio": probe_median / full_seconds,
                             "from_run_seconds": ranking.cost["seconds"],
                             "from_run_ratio": ranking.cost["seconds"] / full_seconds}
    write_json(out / "results.json", results)
    print(json.dumps({"from_run": results["from_run"]["spearman"], "cost_ratio": results["cost_ratio"]}, indent=2))


if __name__ == "__main__":
    main()

"""Does the predictor beat the free priors on models it never saw? One row per calibration sweep, every predictor
judged on that sweep's true C while held out of every choice and fit (nested leave-one-model-out: the design is
chosen and fitted on the other models only). Columns: Spearman (and its share of the sweep's noise ceiling),
top-1 regret C(best) - C(picked), top-3 overlap; for the fitted predictor, each probe signal alone (its
registered direction), the middle-of-stack prior, "shallower first", Spectrum's weight SNR and a random ranking.
Last line: the cost of `rank` against one full-parameter RL run of the sweep's budget and against the whole
sweep, from the sweep's own records and its ranking (wall seconds on the machine that made them), or measured
side by side in this process with --measure-cost.

Run: python benchmarks/predictor_benchmark.py calibration/runs/*          (each dir: contributions.json + ranking.json)
     python benchmarks/predictor_benchmark.py calibration/runs/* --json results/predictor_benchmark.json
     python benchmarks/predictor_benchmark.py calibration/runs/* --measure-cost calibration/runs/qwen3-L12-grpo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

PRIORS = ("middle prior", "shallower first", "random")


def judge(pred, c, ceiling):
    """(Spearman, share of ceiling, top-1 regret, top-3 overlap) of one prediction against one sweep's C."""
    from layerscout.metrics import spearman, top1_regret, topk_overlap

    rho = spearman(pred, c)
    k = min(3, len(c))
    return {"spearman": rho, "of_ceiling": rho / ceiling if ceiling else float("nan"),
            "regret": top1_regret(pred, c), "top3": topk_overlap(pred, c, k)}


def random_row(c, ceiling, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    rows = [judge(rng.permutation(len(c)).astype(float), c, ceiling) for _ in range(n)]
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def table(sweeps, pool):
    from layerscout.predictor import nested_lomo
    from layerscout.signals import SIGNALS
    from layerscout.signals.baselines import depth_prior

    held_out = nested_lomo(sweeps, pool)
    rows = []
    for s in sweeps:
        ok, c = s.defined, s.contribution[s.defined]
        k = np.arange(s.n_layers)[ok]
        cells = {"fitted (held out)": judge(held_out[s.name]["prediction"][ok], c, s.noise_ceiling)}
        for name in sorted(s.signals):
            sign = 1.0 if name not in SIGNALS or SIGNALS[name].higher_is_better else -1.0
            cells[name] = judge(sign * s.signals[name][ok], c, s.noise_ceiling)
        cells["middle prior"] = judge(depth_prior(s.n_layers)[k], c, s.noise_ceiling)
        cells["shallower first"] = judge(-k.astype(float), c, s.noise_ceiling)
        cells["random"] = random_row(c, s.noise_ceiling)
        rows.append({"sweep": s.name, "model": s.model, "noise_ceiling": s.noise_ceiling,
                     "choice": held_out[s.name]["choice"], "cells": cells})
    return rows


def rank_cost(directory: Path) -> dict:
    """rank's seconds (ranking.json) against the full run's and the whole sweep's (the records' wall_seconds)."""
    ranking = json.loads((directory / "ranking.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted(directory.glob("runs/*/*.json"))]
    full = [r["wall_seconds"] for r in records if r["layers"] is None]
    rank_s = ranking.get("cost", {}).get("seconds")
    signals = len(ranking["layers"][0]["signals"]) if ranking.get("layers") else 0
    if rank_s is None or not records:
        return {"rank_seconds": rank_s, "signals": signals, "full_run_seconds": None, "sweep_seconds": None,
                "vs_full_run": None, "vs_sweep": None}
    return {"rank_seconds": rank_s, "signals": signals, "full_run_seconds": float(np.median(full)) if full else None,
            "sweep_seconds": float(sum(r["wall_seconds"] for r in records)),
            "vs_full_run": rank_s / float(np.median(full)) if full else None,
            "vs_sweep": rank_s / sum(r["wall_seconds"] for r in records) if records else None}


def measure_cost(directory: Path, repeats: int = 2) -> dict:
    """rank (the default: only the predictor's signals; and `-o signals=[all]`, every signal, as calibration rankings
    compute them) and one full-parameter run of the sweep's own settings (calibrate's run_job into a temporary dir
    that holds the sweep's base eval, so the run pays what each sweep run paid), alternated `repeats` times in this
    process: medians of each and their ratios, on the same machine under the same load."""
    import dataclasses
    import shutil
    import tempfile
    import time

    from layerscout.calibrate import BASE_EVAL, MANIFEST, load_config, run_job
    from layerscout.probe import rank_layers

    config = load_config(directory / MANIFEST)
    overrides = [f"task_options.{k}={json.dumps(v)}" for k, v in config.task_options.items()]
    variants = {"rank": [], "rank_all_signals": ["signals=[all]"]}
    seconds = {name: [] for name in [*variants, "full_run"]}
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(directory / BASE_EVAL, Path(tmp) / BASE_EVAL)
        for i in range(repeats):
            for name, extra in variants.items():
                start = time.perf_counter()
                rank_layers(config.model, config.task, overrides=overrides + extra, progress=False)
                seconds[name].append(time.perf_counter() - start)
            job = {"id": f"cost/{i}", "seed": 0, "name": f"full-{i}", "layers": None, "command": "",
                   "record": str(Path(tmp) / f"full-{i}.json")}
            start = time.perf_counter()
            run_job(dataclasses.replace(config, output=tmp), job, progress=False)
            seconds["full_run"].append(time.perf_counter() - start)
    n_runs = len(list(directory.glob("runs/*/*.json")))
    med = {name: float(np.median(v)) for name, v in seconds.items()}
    return {**{f"{name}_seconds": v for name, v in seconds.items()},
            "vs_full_run": med["rank"] / med["full_run"], "vs_sweep": med["rank"] / (med["full_run"] * n_runs),
            "all_signals_vs_full_run": med["rank_all_signals"] / med["full_run"], "sweep_runs": n_runs,
            "note": "vs_sweep counts every sweep run at the full run's median (single-block runs cost about as much)"}


def fmt(cell) -> str:
    rho, share = cell["spearman"], cell["of_ceiling"]
    rho_s = "–" if not np.isfinite(rho) else f"{rho:+.2f}"
    share_s = "" if not np.isfinite(share) else f" ({100 * share:.0f} %)"
    return f"{rho_s}{share_s} / {cell['regret']:.2f} / {cell['top3']:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweeps", nargs="+", help="calibration sweep dirs (contributions.json + ranking.json)")
    ap.add_argument("--max-signals", type=int, default=2)
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--measure-cost", metavar="SWEEP_DIR", help="time rank against one full run of this sweep's "
                                                                "settings, side by side in this process")
    args = ap.parse_args()

    from layerscout.predictor import NOT_FEATURES, candidates, load_sweep

    sweeps = [load_sweep(d) for d in args.sweeps]
    names = sorted(set.intersection(*(set(s.signals) for s in sweeps)) - set(NOT_FEATURES))
    rows = table(sweeps, candidates(names, args.max_signals, forest=False))
    columns = ["fitted (held out)", *names, *PRIORS[:2], *(["spectral_snr"] if "spectral_snr" in names else []),
               "random"]
    columns = list(dict.fromkeys(columns))
    print("cell: Spearman (share of the noise ceiling) / top-1 regret / top-3 overlap; fitted: design chosen and "
          "fitted without the sweep's model")
    print("| sweep | ceiling | held-out design | " + " | ".join(columns) + " |")
    print("|" + "---|" * (len(columns) + 3))
    for r in rows:
        ceiling = "–" if r["noise_ceiling"] is None else f"{r['noise_ceiling']:.2f}"
        print(f"| {r['sweep']} | {ceiling} | {r['choice']} | " + " | ".join(fmt(r["cells"][c]) for c in columns)
              + " |")
    ahead = [r for r in rows if all(r["cells"]["fitted (held out)"]["spearman"] > r["cells"][p]["spearman"]
                                    for p in PRIORS[:2])]
    print(f"\nfitted ahead of both depth priors on {len(ahead)} of {len(rows)} held-out sweeps")
    costs = {Path(d).name: rank_cost(Path(d)) for d in args.sweeps}
    for name, c in costs.items():
        if c["vs_full_run"] is not None:
            print(f"cost of {name}'s ranking ({c['signals']} signals, at its own time and load): "
                  f"{c['rank_seconds']:.0f} s = {100 * c['vs_full_run']:.1f} % of one full run "
                  f"({c['full_run_seconds']:.0f} s), {100 * c['vs_sweep']:.2f} % of the sweep ({c['sweep_seconds']:.0f} s)")
    measured = None
    if args.measure_cost:
        measured = measure_cost(Path(args.measure_cost))
        print(f"measured side by side on {Path(args.measure_cost).name} (medians of {len(measured['rank_seconds'])}):"
              f" rank {np.median(measured['rank_seconds']):.1f} s = {100 * measured['vs_full_run']:.1f} % of one full "
              f"run ({np.median(measured['full_run_seconds']):.0f} s), {100 * measured['vs_sweep']:.2f} % of the sweep "
              f"({measured['sweep_runs']} runs); rank -o signals=[all] {np.median(measured['rank_all_signals_seconds']):.1f}"
              f" s = {100 * measured['all_signals_vs_full_run']:.1f} % of one full run")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "costs": costs, "measured_cost": measured}, indent=2,
                                              default=float) + "\n")


if __name__ == "__main__":
    main()

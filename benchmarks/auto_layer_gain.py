"""Does `train --auto-layer` raise the held-out score over the base model by more than its own seed-to-seed
spread? The model is probed once; then, per seed, the ranking's top-k blocks are RL-trained (the `train
--auto-layer --ranking FILE` path), next to two references with identical settings: full-parameter RL and the
ranking's bottom-k blocks. Every run is scored on one fixed held-out draw (RLConfig.eval_seed), so the base
score is the same for all seeds and the spread is the RL seed's alone. Prints a table and the verdict; writes
every run record to --output.

Run: python benchmarks/auto_layer_gain.py                          (default organism, 3 seeds x 3 runs, 100 steps)
     python benchmarks/auto_layer_gain.py --model DIR --top-k 2 -o learning_rate=3.0e-4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

DEFAULT_RL = ["max_steps=100", "eval_prompts=256", "eval_seed=0", "max_completion_length=8", "save_steps=0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="hub id, model dir or .gguf (default: the default organism)")
    ap.add_argument("--task", default="math", help="probe recipe name or YAML")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("-o", "--override", action="append", default=[],
                    help=f"RLConfig KEY=VALUE on top of {' '.join(DEFAULT_RL)}")
    ap.add_argument("--no-controls", action="store_true", help="skip the full and bottom-k reference runs")
    ap.add_argument("--output", default=None, help="JSON with the ranking and every run record")
    args = ap.parse_args()

    from layerscout.autolayer import train_auto
    from layerscout.config import RLConfig, apply_overrides, from_dict
    from layerscout.probe import rank_layers
    from layerscout.records import provenance, write_json
    from layerscout.training import train_layers

    ranking = rank_layers(args.model, args.task, progress=False)
    top, bottom = ranking.top(args.top_k), ranking.top(len(ranking.layers))[-args.top_k:]
    print(f"{ranking.model}: probe top-{args.top_k} {top}, bottom-{args.top_k} {bottom}", flush=True)
    arms = {"auto": top} if args.no_controls else {"auto": top, "full": None, "bottom": bottom}
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        ranking_file = Path(tmp) / "ranking.json"
        write_json(ranking_file, ranking.to_dict())
        for seed in args.seeds:
            config = from_dict(RLConfig, apply_overrides({}, DEFAULT_RL + args.override + [f"seed={seed}"]))
            for arm, layers in arms.items():
                out = Path(tmp) / f"{arm}-{seed}"
                if arm == "auto":
                    record = train_auto(args.model, args.task, top_k=args.top_k, ranking=ranking_file,
                                        config=config, output_dir=out, progress=False)
                else:
                    record = train_layers(args.model, args.task, layers, config, out, progress=False)
                runs[arm].append({k: v for k, v in record.items() if k != "log_history"})  # reward_curve stays
                print(f"seed {seed} {arm:<6} blocks {record['layers']}: base {record['base_score']:.4f} -> "
                      f"{record['final_score']:.4f} ({record['wall_seconds']:.0f} s)", flush=True)

    summary = {arm: _summary(records) for arm, records in runs.items()}
    print(f"\n{'arm':<7} {'blocks':<10} {'mean gain':>10} {'seed std':>9}  gains per seed")
    for arm, s in summary.items():
        print(f"{arm:<7} {str(arms[arm] or 'all'):<10} {s['mean_gain']:>+10.4f} {s['seed_std']:>9.4f}  "
              + " ".join(f"{g:+.4f}" for g in s["gains"]))
    auto = summary["auto"]
    print(f"\nauto-layer gain {auto['mean_gain']:+.4f} vs seed std {auto['seed_std']:.4f}: "
          f"{'above' if auto['mean_gain'] > auto['seed_std'] else 'NOT above'} the spread")
    if args.output:
        write_json(args.output, {"ranking": ranking.to_dict(), "arms": arms,
                                 "summary": summary, "runs": runs, "overrides": DEFAULT_RL + args.override,
                                 "provenance": provenance()})


def _summary(records: list[dict]) -> dict:
    """Gain = final - base per seed; spread = the sample std of the final scores across seeds (the base is one
    fixed number when eval_seed is fixed)."""
    gains = [r["final_score"] - r["base_score"] for r in records]
    finals = [r["final_score"] for r in records]
    return {"gains": gains, "mean_gain": statistics.fmean(gains),
            "seed_std": statistics.stdev(finals) if len(finals) > 1 else float("nan"),
            "base_scores": sorted({r["base_score"] for r in records})}


if __name__ == "__main__":
    main()

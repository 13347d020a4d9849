"""The README's table of dry-run memory estimates for Qwen3-1.7B / 4B / 8B on one 80 GiB GPU (configs in
tests/data/hub_configs, written from the public config.json files): the probe, single-block GRPO and full-parameter
GRPO, each with and without gradient checkpointing, under the CUDA default precision (fp32 weights, bf16 autocast).
Settings: 16 prompts x 8 completions, 256 prompt + 1024 completion tokens; the probe's micro-batch 8 sequences;
GRPO 8 prompts x 8 completions per step in micro-batches of 8 sequences (gradient accumulation).

Run: python benchmarks/dry_run_table.py
"""

from __future__ import annotations

from pathlib import Path

from layerscout.config import ProbeConfig, RLConfig
from layerscout.dryrun import GIB, grpo_memory, model_shape, planned_precision, probe_memory

CONFIGS = Path(__file__).resolve().parent.parent / "tests" / "data" / "hub_configs"
CAPACITY = 80 * GIB
PROMPT, COMPLETION, GENERATIONS, MICRO_BATCH = 256, 1024, 8, 8


def rows() -> list[tuple]:
    precision = planned_precision("cuda", "auto")
    out = []
    for name in ("Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B"):
        shape = model_shape(str(CONFIGS / name))
        for ckpt in (False, True):
            probe = ProbeConfig(num_prompts=16, num_generations=GENERATIONS, max_completion_length=COMPLETION,
                                batch_size=MICRO_BATCH, gradient_checkpointing=ckpt)
            rl = RLConfig(prompts_per_step=8, num_generations=GENERATIONS, max_completion_length=COMPLETION)
            p = probe_memory(shape, probe, precision, PROMPT)
            one = grpo_memory(shape, rl, precision, PROMPT, 1, MICRO_BATCH, ckpt)
            full = grpo_memory(shape, rl, precision, PROMPT, None, MICRO_BATCH, ckpt)
            out.append((name, shape.params, ckpt, p, one, full))
    return out


def cell(est: dict) -> str:
    gib = est["peak_bytes"] / GIB
    return f"{gib:.0f} GiB ({est['peak_phase']}){'' if gib <= 80 else ' ✗'}"


def main() -> None:
    print("| model | params | checkpointing | probe (host state) | single-block GRPO | full-parameter GRPO |")
    print("|---|---|---|---|---|---|")
    for name, params, ckpt, p, one, full in rows():
        print(f"| {name} | {params / 1e9:.2f} B | {'yes' if ckpt else 'no'} | {cell(p)} "
              f"({p['host_bytes'] / GIB:.0f} GiB) | {cell(one)} | {cell(full)} |")


if __name__ == "__main__":
    main()

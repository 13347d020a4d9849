"""Does a longer run sharpen SmolLM2's math truth? Compares the 30-step sweep (smollm2-135m-math-grpo-e1600) with the
60-step pilot (smollm2-135m-math-grpo-s60) on the pilot's blocks, from committed records only: per seed, each
block's C and paired z; per pair of seeds, the Spearman of C and the mean z² of their final scores' differences
(1 where only eval noise separates them); over the seeds, ICC(3,1) of the block gains.

    python calibration/compare_lengths.py
"""
import itertools
import json
from pathlib import Path

import numpy as np
from layerscout.metrics import paired_z, spearman

ROOT = Path(__file__).resolve().parent / "runs"
SWEEPS = ("smollm2-135m-math-grpo-e1600", "smollm2-135m-math-grpo-s60")
BLOCKS = (0, 6, 12, 18, 24)


def per_prompt(path: Path, key: str) -> np.ndarray:
    return np.asarray(json.loads(path.read_text())[key]["per_prompt"], float)


def icc_consistency(m: np.ndarray) -> float:
    """ICC(3,1) (Shrout & Fleiss): rows are blocks, columns seeds; a whole-seed offset does not count, as in a
    ranking."""
    n, k = m.shape
    resid = m - m.mean(1, keepdims=True) - m.mean(0, keepdims=True) + m.mean()
    ms_rows = k * ((m.mean(1) - m.mean()) ** 2).sum() / (n - 1)
    ms_err = (resid ** 2).sum() / ((n - 1) * (k - 1))
    return float((ms_rows - ms_err) / (ms_rows + (k - 1) * ms_err))


def load(sweep: str) -> tuple[np.ndarray, dict]:
    """The base model's per-prompt scores and, per seed, its full run's and blocks' per-prompt final scores."""
    base = per_prompt(ROOT / sweep / "base_eval.json", "result")
    seeds = {}
    for d in sorted((ROOT / sweep / "runs").iterdir()):
        seeds[int(d.name)] = per_prompt(d / "full.json", "final_eval"), {
            b: per_prompt(d / f"layer-{b}.json", "final_eval") for b in BLOCKS if (d / f"layer-{b}.json").is_file()}
    return base, seeds


def main() -> None:
    sweeps = {sweep: load(sweep) for sweep in SWEEPS}
    # blocks each seed has in every sweep, so that both lengths are compared on the same blocks
    has = {s: set.intersection(*(set(seeds[s][1]) for _, seeds in sweeps.values())) for s in sweeps[SWEEPS[0]][1]}
    for sweep, (base, seeds) in sweeps.items():
        print(f"{sweep}: base {base.mean():.3f}")
        for s, (full, blocks) in seeds.items():
            gain = full.mean() - base.mean()
            print(f"  seed {s}: full {full.mean():.3f} ({paired_z(base, full):.1f} SE); " + ", ".join(
                f"block {b} C {(v.mean() - base.mean()) / gain:.3f} ({paired_z(base, v):.1f} SE)"
                for b, v in blocks.items()))
        for group in [*itertools.combinations(seeds, 2), tuple(seeds)]:
            both = sorted(set.intersection(*(has[s] for s in group)))
            if len(both) < 3:
                continue
            m = np.array([[seeds[s][1][k].mean() for s in group] for k in both])
            line = f"  seeds {group} over blocks {both}: ICC(3,1) {icc_consistency(m):.2f}"
            if len(group) == 2:
                a, b = group
                z2 = np.mean([paired_z(seeds[a][1][k], seeds[b][1][k]) ** 2 for k in both])
                line += f", Spearman {spearman(m[:, 0], m[:, 1]):.2f}, mean z² of differences {z2:.2f}"
            print(line)


if __name__ == "__main__":
    main()

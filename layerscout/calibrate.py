"""Ground truth for the predictor: per seed, one full-parameter RL run plus one single-block run per scanned
layer (arXiv 2607.01232), merged into C(k) = (S_k - S_base) / (S_full - S_base). Every run is an independent
job that writes its own record atomically the moment it finishes, so a sweep resumes after a kill, splits over
Slurm array tasks (`shard`) or Ray, and `summarize` merges whatever exists. Cost: (layers + 1) × seeds runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RLConfig, _f, apply_overrides, from_dict, load_yaml
from .errors import LayerscoutError
from .records import write_json

MANIFEST = "sweep.json"
SUMMARY = "contributions.json"
# Fields that change what a run produces: a sweep dir refuses a config that differs in any of them.
IDENTITY = ("model", "task", "task_options", "algo", "steps", "rl")
# The command that runs exactly job j of n (the manifest carries the config).
JOB_COMMAND = "python -m layerscout.calibrate {manifest} --shard {j}/{n}"
RECORD_KEYS = ("job", "seed", "layers", "base_score", "final_score")


@dataclass
class CalibrationConfig:
    """One ground-truth sweep. As in the paper, every run shares the RL settings (tune learning_rate on the
    full run only); `rl` holds any other RLConfig field. Defaults scan the default organism."""

    model: str | None = _f(None, "hub id, local model dir or .gguf file; None = the default organism")
    task: str = _f("math", "probe recipe name or YAML path: its task, options and metadata.version")
    task_options: dict[str, Any] = _f({}, "override the recipe's task_options, e.g. {dataset: openai/gsm8k}")
    algo: str = _f("grpo", "loss_type of every run: grpo | dr_grpo")
    layers: str = _f("all", "blocks to scan, one single-block run each: all, 0,4,8, 0-4, ::3")
    seeds: list[int] = _f([0, 1], "seeds; each gets one full run and one run per scanned block")
    steps: int = _f(20, "GRPO steps of every run (RLConfig.max_steps)")
    rl: dict[str, Any] = _f({}, "other RLConfig fields, the same for every run (save_steps defaults to 0 here)")
    output: str = _f("calibration/runs/default", "sweep dir: sweep.json, runs/<seed>/<job>.json, contributions.json")
    job_cpus: float = _f(1.0, "CPUs reserved per job under the Ray launcher")
    job_gpus: float = _f(0.0, "GPUs reserved per job under the Ray launcher")
    keep_runs: bool = _f(False, "keep each run's model dir (scratch/<seed>/<job>/) after its record is written")

    def __post_init__(self) -> None:
        fixed = sorted({"loss_type", "max_steps", "seed"} & set(self.rl))
        if fixed:
            raise LayerscoutError(f"rl sets {', '.join(fixed)}: use algo, steps and seeds instead")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise LayerscoutError(f"seeds must be a non-empty list without repeats; got {self.seeds}")
        self.rl_config(self.seeds[0])  # bad rl keys, types or values fail now, not after the first run

    def rl_config(self, seed: int) -> RLConfig:
        """The RLConfig of every run of `seed`. Checkpoints are off unless `rl` asks: a killed run restarts."""
        return from_dict(RLConfig, {"save_steps": 0, **self.rl, "loss_type": self.algo, "max_steps": self.steps,
                                    "seed": seed}, source="rl")


def load_config(path: str | Path, overrides: list[str] = ()) -> CalibrationConfig:
    """A CalibrationConfig from a YAML file of its fields, or from a sweep's sweep.json; `key=value` overrides."""
    data = load_yaml(path)
    if Path(path).name == MANIFEST:
        data = data["config"]
    return from_dict(CalibrationConfig, apply_overrides(data, list(overrides)), source=str(path))


# ---------------------------------------------------------------- plan

def jobs(config: CalibrationConfig) -> list[dict]:
    """Every run of the sweep, seed-major (full run, then each block), each with its record path and the shell
    command that runs exactly it (for Slurm, Ray or any scheduler). Writes DIR/sweep.json, which those
    commands read; a dir holding a sweep whose runs would differ (any IDENTITY field) is refused. The task
    and its options are checked here, so a bad one fails before any job starts.
    Example: `[j["command"] for j in jobs(CalibrationConfig(layers="0,4"))]`."""
    from .models import parse_layers
    from .recipes import build_task

    build_task(_recipe(config))
    out = Path(config.output)
    n_layers = _depth(config.model)
    runs = [("full", None)] + [(f"layer-{k}", [k]) for k in parse_layers(config.layers, n_layers)]
    specs = [(seed, name, layers) for seed in config.seeds for name, layers in runs]
    manifest = out / MANIFEST
    planned = [{"index": j, "id": f"{seed}/{name}", "seed": seed, "name": name, "layers": layers,
                "record": str(out / "runs" / str(seed) / f"{name}.json"),
                "command": JOB_COMMAND.format(manifest=shlex.quote(str(manifest)), j=j, n=len(specs))}
               for j, (seed, name, layers) in enumerate(specs)]
    _write_manifest(manifest, config, n_layers, planned)
    return planned


def select_shard(planned: list[dict], shard: tuple[int, int] | None) -> list[dict]:
    """Job j belongs to shard (i, n) when j % n == i (Slurm: i = $SLURM_ARRAY_TASK_ID, n = its count)."""
    if shard is None:
        return planned
    i, n = _check_shard(*shard)
    return [job for job in planned if job["index"] % n == i]


def parse_shard(text: str) -> tuple[int, int]:
    """"3/8" -> (3, 8), as in `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise LayerscoutError(f"shard must look like i/n (e.g. 0/4); got {text!r}") from None
    return _check_shard(i, n)


def _check_shard(i: int, n: int) -> tuple[int, int]:
    if not 0 <= i < n:
        raise LayerscoutError(f"shard must be i/n with 0 <= i < n; got {i}/{n}")
    return i, n


def _depth(model: str | None) -> int:
    """Decoder blocks of `model`, from config.json when there is one (no weights loaded)."""
    from .models import load_model, num_layers

    if model is None:
        from .organisms import default_organism_path

        model = str(default_organism_path())
    if (Path(model) / "config.json").is_file():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model).get_text_config().num_hidden_layers
    return num_layers(load_model(model)[0])


def _write_manifest(path: Path, config: CalibrationConfig, n_layers: int, planned: list[dict]) -> None:
    new = {"config": dataclasses.asdict(config), "n_layers": n_layers, "jobs": planned}
    old = _read_json(path)
    if old is not None:
        changed = [k for k in IDENTITY if old["config"].get(k) != new["config"][k]]
        if changed:
            raise LayerscoutError(f"{path.parent} holds a sweep with a different {', '.join(changed)}; "
                                  f"choose another output dir")
    if old != json.loads(json.dumps(new)):
        write_json(path, new)


# ---------------------------------------------------------------- run

def run_calibration(config: CalibrationConfig, launcher: str = "local", shard: tuple[int, int] | None = None,
                    ray_address: str | None = None, progress: bool = True) -> dict:
    """Run this shard's unfinished jobs (all of them without `shard`), then merge every record in the dir.

    `launcher="local"` runs them one after another in this process; `"ray"` submits each as a Ray task with
    `job_cpus` / `job_gpus` (needs `pip install ray` and an output dir all workers share). Returns
    {"ran": [...], "done_before": [...], "summary": summarize(...)}. Example:
    `run_calibration(CalibrationConfig(seeds=[0], layers="::2", output="cal/tiny"), shard=(0, 4))`.
    """
    if launcher not in ("local", "ray"):
        raise LayerscoutError(f"launcher must be local or ray; got {launcher!r}")
    ray = _import_ray() if launcher == "ray" else None
    mine = select_shard(jobs(config), shard)
    todo = [job for job in mine if read_record(job["record"]) is None]
    if not config.keep_runs:  # a run killed between writing its record and removing its scratch
        for job in mine:
            if job not in todo:
                shutil.rmtree(_scratch(config, job), ignore_errors=True)
    if ray is None:
        for n, job in enumerate(todo, 1):
            if progress:
                print(f"calibrate: [{n}/{len(todo)}] {job['id']}", file=sys.stderr)
            run_job(config, job, progress)
    else:
        ray.init(address=ray_address, ignore_reinit_error=True)
        remote = ray.remote(num_cpus=config.job_cpus, num_gpus=config.job_gpus)(run_job)
        ray.get([remote.remote(config, job, False) for job in todo])
    return {"ran": [j["id"] for j in todo], "done_before": [j["id"] for j in mine if j not in todo],
            "summary": summarize(config.output)}


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LayerscoutError("the ray launcher needs Ray: pip install 'layerscout[ray]'") from None
    return ray


def run_job(config: CalibrationConfig, job: dict, progress: bool = True) -> dict:
    """One run, then its record, written atomically to job["record"]. Starts from a clean scratch dir: a
    killed run left no record, only scratch that is safe to overwrite."""
    from .recipes import build_task
    from .training import train_layers

    recipe = _recipe(config)
    scratch = _scratch(config, job)
    shutil.rmtree(scratch, ignore_errors=True)
    run = train_layers(config.model, build_task(recipe), job["layers"], config.rl_config(job["seed"]), scratch,
                       progress=progress)
    dropped = ("log_history", "output_dir", "delta")  # per-step logs: reward_curve keeps the reward
    record = {"job": job["id"], **{k: v for k, v in run.items() if k not in dropped},
              "recipe_version": recipe.version, "recipe": str(recipe.path), "job_command": job["command"],
              "run_dir": str(scratch) if config.keep_runs else None, "calibration": dataclasses.asdict(config)}
    write_json(job["record"], record)
    if not config.keep_runs:
        shutil.rmtree(scratch)
    return record


def _scratch(config: CalibrationConfig, job: dict) -> Path:
    return Path(config.output) / "scratch" / str(job["seed"]) / job["name"]


def _recipe(config: CalibrationConfig):
    """The probe recipe `config.task` with `config.task_options` applied: the same task `layerscout rank` uses."""
    from .recipes import load_recipe

    return load_recipe(config.task, [f"task_options.{k}={json.dumps(v)}" for k, v in config.task_options.items()])


# ---------------------------------------------------------------- merge

def read_record(path: str | Path) -> dict | None:
    """A finished run's record; None when absent, or unreadable (warned, then treated as not run)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(f"skipping corrupted record {path}: {e}", stacklevel=2)
        return None
    missing = [k for k in RECORD_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        warnings.warn(f"skipping corrupted record {path}: no {', '.join(missing)}", stacklevel=2)
        return None
    return record


def summarize(directory: str | Path, write: bool = True) -> dict:
    """Merge every readable record under DIR/runs into C(k) per block and seed; written to
    DIR/contributions.json unless write=False. Corrupted records are warned about and skipped; jobs without
    a record are listed in `missing`; a seed whose full run did not beat its base is in `undefined_seeds`, one
    whose full-run gain is within eval noise in `weak_seeds`."""
    directory = Path(directory)
    manifest = _read_json(directory / MANIFEST)
    records = [r for p in sorted(directory.glob("runs/*/*.json")) if (r := read_record(p)) is not None]
    if manifest is None and not records:
        raise LayerscoutError(f"{directory} holds no calibration sweep (no {MANIFEST}, no runs/*/*.json)")
    planned = manifest["jobs"] if manifest else _implied_jobs(records)
    summary = contributions(records, planned)
    if not records:
        summary.update(model=manifest["config"]["model"], task=manifest["config"]["task"],
                       algo=manifest["config"]["algo"], n_layers=manifest["n_layers"])
    summary["directory"] = str(directory)
    if write:
        write_json(directory / SUMMARY, summary)
    return summary


def _implied_jobs(records: list[dict]) -> list[dict]:
    """Without a manifest, the records' seeds times (full + every block) are expected."""
    n = records[0]["num_layers"]
    return [{"id": f"{seed}/{name}", "seed": seed, "layers": layers}
            for seed in sorted({r["seed"] for r in records})
            for name, layers in [("full", None)] + [(f"layer-{k}", [k]) for k in range(n)]]


def contributions(records: list[dict], planned: list[dict]) -> dict:
    """C(k) per seed and its mean/spread over seeds from run records (pure). `planned`: the job dicts
    expected (id, seed, layers), which fix the blocks and seeds reported and what counts as missing."""
    import numpy as np

    from .metrics import layer_contribution, seed_spearman

    by_id = {r["job"]: r for r in records}
    seeds = sorted({j["seed"] for j in planned} | {r["seed"] for r in records})
    blocks = sorted({j["layers"][0] for j in planned if j["layers"]} |
                    {r["layers"][0] for r in records if r["layers"]})
    s_base, s_full, undefined, weak, c = {}, {}, {}, {}, {}
    for seed in seeds:
        runs = {r["job"].split("/", 1)[1]: r for r in records if r["seed"] == seed}
        bases = sorted({r["base_score"] for r in runs.values()})
        if bases:
            s_base[str(seed)] = bases[0]
        if "full" in runs:
            s_full[str(seed)] = runs["full"]["final_score"]
        if len(bases) > 1:
            undefined[str(seed)] = (f"the base scores of this seed's runs disagree ({bases}): the model or "
                                    f"eval settings changed between runs")
        elif "full" not in runs:
            undefined[str(seed)] = "no record of the full run yet"
        else:
            scores = {k: runs[f"layer-{k}"]["final_score"] for k in blocks if f"layer-{k}" in runs}
            try:
                c[seed] = dict(zip(scores, layer_contribution(list(scores.values()), bases[0], s_full[str(seed)])))
            except LayerscoutError as e:
                undefined[str(seed)] = str(e)
            else:
                weak.update(_weak_gain(seed, bases[0], runs["full"]))
    layers = []
    for k in blocks:
        per_seed = {str(s): float(c[s][k]) for s in c if k in c[s]}
        values = list(per_seed.values())
        layers.append({
            "index": k,
            "contribution": float(np.mean(values)) if values else None,
            "spread": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "per_seed": per_seed,
            "score": {str(r["seed"]): r["final_score"] for r in records if r["layers"] == [k]},
        })
    common = [k for k in blocks if all(k in c[s] for s in c)]  # blocks every defined seed has a C for
    agreement = seed_spearman([[c[s][k] for k in common] for s in c])
    first = records[0] if records else {}
    return {
        "model": first.get("model"), "task": first.get("task"),
        "task_versions": sorted({r["task_version"] for r in records if "task_version" in r}),
        "algo": first.get("algo"), "n_layers": first.get("num_layers"), "steps": first.get("steps"),
        "seeds": seeds, "s_base": s_base, "s_full": s_full, "undefined_seeds": undefined, "weak_seeds": weak,
        "layers": layers, "seed_spearman": agreement if np.isfinite(agreement) else None,
        "missing": [j["id"] for j in planned if j["id"] not in by_id],
        "records": len(records),
    }


def _weak_gain(seed: int, s_base: float, full: dict) -> dict[str, str]:
    """{seed: why} when the full run's gain is under two standard errors of the score difference: C is then
    mostly eval noise divided by a small number. Binary rewards assumed (greedy accuracy, as in math)."""
    from .metrics import gain_standard_error

    n = (full.get("final_eval") or {}).get("n")
    if not n:
        return {}
    gain, se = full["final_score"] - s_base, gain_standard_error(s_base, full["final_score"], n)
    if gain >= 2 * se:
        return {}
    return {str(seed): f"S_full - S_base = {gain:.3f} is under 2 standard errors ({2 * se:.3f}) of a score "
                       f"difference on {n} held-out prompts (independent binomials: an upper bound for paired "
                       f"scores), so this seed's C may be mostly eval noise"}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------- command line of one job

def main(argv: list[str] | None = None) -> None:
    """`python -m layerscout.calibrate CONFIG [--shard i/n]`: what each job's `command` runs. CONFIG is a YAML of
    CalibrationConfig fields or a sweep's sweep.json."""
    parser = argparse.ArgumentParser(prog="python -m layerscout.calibrate", description=main.__doc__)
    parser.add_argument("config")
    parser.add_argument("-o", "--override", action="append", default=[], help="key=value on CalibrationConfig")
    parser.add_argument("--shard", help="i/n: run job j where j %% n == i")
    parser.add_argument("--launcher", choices=("local", "ray"), default="local")
    parser.add_argument("--ray-address")
    parser.add_argument("--print-jobs", action="store_true", help="print the job list as JSON and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.override)
        shard = parse_shard(args.shard) if args.shard else None
        if args.print_jobs:
            print(json.dumps(select_shard(jobs(config), shard), indent=2))
            return
        start = time.perf_counter()
        result = run_calibration(config, args.launcher, shard, args.ray_address, progress=not args.quiet)
    except LayerscoutError as e:
        sys.exit(f"error: {e}")
    print(json.dumps({"ran": result["ran"], "missing": result["summary"]["missing"],
                      "seconds": round(time.perf_counter() - start, 1)}, indent=2))


if __name__ == "__main__":
    main()

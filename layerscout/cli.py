"""`layerscout` command line: a thin click layer over the library. Each command parses options, calls one
public function, and prints a table (stdout) or `--json`; progress goes to stderr. Heavy libraries are
imported inside commands so `layerscout --help` stays instant."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import LayerscoutError

MODEL_HELP = "hub id, local model dir or .gguf file (default: the embedded default organism)"


class _Group(click.Group):
    """Turns LayerscoutError (and a few library errors users cause) into one line on stderr, exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LayerscoutError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Examples:\n\n  layerscout rank --task math\n\n  layerscout rank Qwen/Qwen3-4B --task math --json")
@click.option("--debug", is_flag=True, help="show tracebacks instead of one-line errors")
@click.version_option(package_name="layerscout")
@click.pass_context
def cli(ctx, debug):
    """Predict which decoder layers of an LLM are worth RL-training alone, then train only those."""
    ctx.obj = {"debug": debug}


def _emit(data: dict, as_json: bool, table) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        table()


def _model_options(f):
    f = click.option("--dtype", default="auto", show_default=True,
                     type=click.Choice(["auto", "float32", "bfloat16", "float16"]))(f)
    f = click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")(f)
    return f


def _dataset_options(f):
    f = click.option("--answer-column", help="answer column of --dataset (default: answer)")(f)
    f = click.option("--question-column", help="question column of --dataset (default: question)")(f)
    f = click.option("--dataset", help="hub dataset id (e.g. openai/gsm8k) or local .jsonl/.json/.parquet/.csv "
                                       "instead of the recipe's generator")(f)
    return f


def _dataset_overrides(dataset, question_column, answer_column) -> list[str]:
    pairs = {"dataset": dataset, "source": "dataset" if dataset else None, "question_column": question_column,
             "answer_column": answer_column}
    return [f"task_options.{k}={json.dumps(v)}" for k, v in pairs.items() if v is not None]


# ---------------------------------------------------------------- rank

@cli.command(epilog="""Examples:

  layerscout rank --task math                       # default organism, built on first use

  layerscout rank Qwen/Qwen3-4B --task math --json --output ranking.json

  layerscout rank ./SmolLM2-135M-Instruct.Q4_1.gguf --probe my_math.yaml -o num_prompts=16
""")
@click.argument("model", required=False)
@click.option("--task", "task", default="math", show_default=True, help="built-in probe recipe (task name)")
@click.option("--probe", "probe_file", type=click.Path(dir_okay=False), help="probe recipe YAML (overrides --task)")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a recipe field, e.g. -o num_prompts=16 -o task_options.generator=chain_sum")
@_dataset_options
@click.option("--seed", type=int, help="probe seed (same seed, same ranking on CPU)")
@_model_options
@click.option("--json", "as_json", is_flag=True, help="print the ranking as JSON on stdout")
@click.option("--output", type=click.Path(dir_okay=False), help="write the ranking JSON here")
@click.option("--quiet", is_flag=True, help="no progress bars")
def rank(model, task, probe_file, overrides, dataset, question_column, answer_column, seed, device, dtype, as_json,
         output, quiet):
    """Run a short RL probe on MODEL and rank its decoder layers for single-layer RL."""
    from .probe import rank_layers
    from .records import write_json

    overrides = list(overrides) + _dataset_overrides(dataset, question_column, answer_column)
    ranking = rank_layers(model, probe_file or task, overrides=overrides, seed=seed, device=device,
                          dtype=dtype, progress=not quiet)
    data = ranking.to_dict()
    if output:
        write_json(output, data)
    _emit(data, as_json, lambda: _print_ranking(data))


def _print_ranking(data: dict) -> None:
    main = [s for s in ("lookahead_gain", "grad_norm_rel", "grad_snr", "fisher_trace", "attribution",
                        "update_norm", "spectral_snr") if s in data["layers"][0]["signals"]]
    head = f"{'layer':>5} {'rank':>4} {'score':>6} " + " ".join(f"{s:>14}" for s in main)
    click.echo(f"model {data['model']}  task {data['task']}  algo {data['algo']}  seed {data['seed']}")
    click.echo(head)
    for row in data["layers"]:
        vals = " ".join(f"{row['signals'][s]:>14.4g}" for s in main)
        click.echo(f"{row['index']:>5} {row['rank']:>4} {row['score']:>6.3f} {vals}")
    c, r = data["cost"], data["rollouts"]
    click.echo(f"top layer: {data['top_layer']}  |  mean reward {r['mean_reward']:.2f}, "
               f"{r['informative_groups']}/{r['prompts']} groups informative  |  {c['seconds']:.1f} s, "
               f"{c['generated_tokens']} generated tokens, {c['forward_backward_passes']} fwd+bwd passes")


# ---------------------------------------------------------------- RL runs

def _rl_config(config_file, overrides, **fields):
    """RLConfig from an optional YAML file, then -o KEY=VALUE overrides, then explicit flags."""
    from .config import RLConfig, apply_overrides, from_dict, load_yaml

    data = load_yaml(config_file) if config_file else {}
    data = apply_overrides(data, list(overrides))
    data.update({k: v for k, v in fields.items() if v is not None})
    return from_dict(RLConfig, data, source=config_file or "options")


def _writable_dir(path: str) -> str:
    import os
    from pathlib import Path

    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LayerscoutError(f"cannot create output dir {p}: {e.strerror}") from None
    if not os.access(p, os.W_OK):
        raise LayerscoutError(f"output dir {p} is not writable")
    return path


@cli.command(epilog="""Examples:

\b
  layerscout train --task math --auto-layer --top-k 2 --steps 20 --output runs/auto
  layerscout train Qwen/Qwen3-4B --task math --auto-layer --ranking ranking.json --output runs/q4
  layerscout train --task math --layers 3,4 --output runs/l34
  layerscout train --task math --full --algo dr_grpo --output runs/full --resume
  layerscout train ./my-model --task agent --algo gigpo --layers 4 --output runs/agent-l4
""")
@click.argument("model", required=False)
@click.option("--task", default="math", show_default=True)
@click.option("--auto-layer", is_flag=True, help="train the top-k blocks of a ranking (probed now, or --ranking)")
@click.option("--top-k", type=int, default=1, show_default=True, help="with --auto-layer: how many blocks")
@click.option("--ranking", "ranking_file", type=click.Path(dir_okay=False), help="with --auto-layer: ranking JSON")
@click.option("--layers", help="explicit blocks: 12,13 | 0-4 | ::3")
@click.option("--full", is_flag=True, help="full-parameter RL (the C(k) reference run)")
@click.option("--algo", type=click.Choice(["grpo", "dr_grpo", "gigpo"]),
              help="loss type (default grpo); gigpo needs a multi-turn task (--task agent)")
@click.option("--steps", type=int, help="optimizer steps (RLConfig.max_steps)")
@click.option("--seed", type=int)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="RLConfig YAML")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE", help="RLConfig field")
@_model_options
@click.option("--output", required=True, type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True, help="continue a killed run from its last checkpoint")
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
def train(model, task, auto_layer, top_k, ranking_file, layers, full, algo, steps, seed, config_file, overrides,
          device, dtype, output, resume, as_json, quiet):
    """RL-train only the chosen decoder blocks (GRPO / Dr. GRPO via TRL; GiGPO on multi-turn tasks), scoring
    held-out before and after."""
    chosen = [flag for flag, on in (("--auto-layer", auto_layer), ("--layers", layers), ("--full", full)) if on]
    if len(chosen) != 1:
        raise LayerscoutError("choose exactly one of --auto-layer, --layers, --full"
                              + (f" (got {' and '.join(chosen)})" if chosen else ""))
    if not auto_layer and (ranking_file or top_k != 1):
        raise LayerscoutError("--ranking and --top-k only apply with --auto-layer")
    if top_k < 1:
        raise LayerscoutError(f"--top-k must be >= 1; got {top_k}")
    cfg = _rl_config(config_file, overrides, loss_type=algo, max_steps=steps, seed=seed)
    _writable_dir(output)
    if auto_layer:
        from .autolayer import train_auto

        record = train_auto(model, task, top_k=top_k, ranking=ranking_file, config=cfg, output_dir=output,
                            resume=resume, seed=seed, device=device, dtype=dtype, progress=not quiet)
    else:
        from .config import ModelSpec
        from .models import load_model, num_layers, parse_layers
        from .recipes import build_task, load_recipe
        from .training import train_layers

        pair = load_model(ModelSpec(name_or_path=model, device=device, dtype=dtype), task=load_recipe(task).task)
        picked = None if full else parse_layers(layers, num_layers(pair[0]))
        record = train_layers(pair, build_task(load_recipe(task)), picked, cfg, output, resume=resume,
                              progress=not quiet)
    _emit(record, as_json, lambda: _print_run(record, output))


def _print_run(record: dict, output: str) -> None:
    base, final = record.get("base_score"), record.get("final_score")
    click.echo(f"trained blocks {record.get('layers') or 'all'} for {record.get('steps')} steps "
               f"({record.get('algo')}): held-out {base:.3f} -> {final:.3f}; wrote {output}")


@cli.command("eval", epilog="Example:\n\n  layerscout eval runs/auto --task math --json")
@click.argument("model", required=False)
@click.option("--task", default="math", show_default=True)
@click.option("-n", "n", type=int, default=64, show_default=True, help="held-out prompts")
@click.option("--samples", type=int, default=1, show_default=True, help="completions per prompt (1 = greedy)")
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@_model_options
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(model, task, n, samples, max_new_tokens, seed, device, dtype, as_json):
    """Held-out score of MODEL on a task (accuracy / pass rate)."""
    from .config import ModelSpec
    from .evaluate import evaluate
    from .models import load_model, model_name
    from .recipes import build_task, load_recipe

    m, tok = load_model(ModelSpec(name_or_path=model, device=device, dtype=dtype), task=load_recipe(task).task)
    result = {"model": model_name(m), "task": task,
              **evaluate(m, tok, build_task(load_recipe(task)), n=n, seed=seed, num_samples=samples,
                         max_new_tokens=max_new_tokens)}
    _emit(result, as_json, lambda: click.echo(f"{result['model']} on {task}: score {result['score']:.3f} "
                                              f"over {result['n']} held-out prompts"))


@cli.command("apply", epilog="Example:\n\n  layerscout apply Qwen/Qwen3-4B runs/q4/layer_delta.safetensors --output q4-rl")
@click.argument("base", required=False)
@click.argument("delta", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", required=True, type=click.Path(file_okay=False))
def apply_cmd(base, delta, output):
    """Rebuild a trained model from its BASE and a layer delta (only the trained blocks' tensors)."""
    from .delta import apply_delta
    from .models import load_model

    _writable_dir(output)
    m, tok = load_model(base)
    apply_delta(m, delta).save_pretrained(output)
    tok.save_pretrained(output)
    click.echo(f"wrote {output}")


@cli.command(epilog="Example:\n\n  layerscout export ranking.json --format axolotl --top-k 3")
@click.argument("ranking_file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["axolotl", "peft", "trl"]), required=True)
@click.option("--top-k", type=int, default=1, show_default=True)
@click.option("--model", help="model to read parameter paths from (default: the ranking's model)")
def export(ranking_file, fmt, top_k, model):
    """Write the config that trains only the top-k blocks in axolotl, PEFT or plain TRL."""
    from .export import export_ranking
    from .models import load_model
    from .ranking import LayerRanking

    ranking = LayerRanking.load(ranking_file).to_dict()
    m, _ = load_model(model or ranking["model"])
    click.echo(export_ranking(ranking, m, fmt, top_k), nl=False)


# ---------------------------------------------------------------- ground truth

@cli.command(epilog="""Examples:

\b
  layerscout calibrate --task math --algo grpo --seeds 3 --steps 100 --output truth/qwen3
  layerscout calibrate Qwen/Qwen3-1.7B --layers ::3 --output truth/q17 --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
  layerscout calibrate --config sweep.yaml --launcher ray --ray-address auto
""")
@click.argument("model", required=False)
@click.option("--task", help="probe recipe name or YAML (default math)")
@click.option("--algo", type=click.Choice(["grpo", "dr_grpo"]))
@click.option("--layers", help="blocks to scan: all | 0,4,8 | 0-4 | ::3")
@click.option("--seeds", type=int, help="number of seeds (0..N-1)")
@click.option("--steps", type=int, help="GRPO steps of every run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="CalibrationConfig YAML or sweep.json")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="CalibrationConfig field, e.g. -o rl.learning_rate=1e-4")
@click.option("--output", type=click.Path(file_okay=False), help="sweep dir")
@click.option("--launcher", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", help="Ray cluster address (default: start a local Ray)")
@click.option("--shard", help="i/n: run only jobs j with j % n == i (Slurm job arrays)")
@click.option("--print-jobs", is_flag=True, help="print the job list (with commands) as JSON and exit")
@click.option("--quiet", is_flag=True)
def calibrate(model, task, algo, layers, seeds, steps, config_file, overrides, output, launcher, ray_address, shard,
              print_jobs, quiet):
    """Ground truth: a full-parameter run and one single-block run per block, per seed -> C(k). Full runs go
    first; a seed whose full run gains under min_gain_se paired standard errors gets no block runs. Each run
    writes its record the moment it finishes; rerunning skips finished runs."""
    from . import calibrate as cal
    from .config import apply_overrides, from_dict, load_yaml

    data = cal.load_config(config_file).__dict__ if config_file else {}
    data = apply_overrides(dict(data), list(overrides))
    if seeds is not None and seeds < 1:
        raise LayerscoutError(f"--seeds must be >= 1; got {seeds}")
    flags = {"model": model, "task": task, "algo": algo, "layers": layers, "steps": steps, "output": output,
             "seeds": list(range(seeds)) if seeds is not None else None}
    data.update({k: v for k, v in flags.items() if v is not None})
    config = from_dict(cal.CalibrationConfig, data, source=config_file or "options")
    part = cal.parse_shard(shard) if shard else None
    if print_jobs:
        click.echo(json.dumps(cal.select_shard(cal.jobs(config), part), indent=2))
        return
    result = cal.run_calibration(config, launcher, part, ray_address, progress=not quiet)
    summary = result["summary"]
    click.echo(json.dumps({"ran": result["ran"], "skipped_seeds": result["skipped"],
                           "missing": summary.get("missing"), "seed_spearman": summary.get("seed_spearman"),
                           "noise_ceiling": summary.get("noise_ceiling"),
                           "contributions": f"{config.output}/contributions.json"}, indent=2, default=str))


@cli.command(epilog="""Example:

\b
  layerscout validate ranking.json truth/qwen3 --output report/
""")
@click.argument("paths", nargs=-1, required=True)
@click.option("--output", required=True, type=click.Path(file_okay=False))
@click.option("--top-k", "k", type=int, default=3, show_default=True)
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="bootstrap resamples for intervals")
@click.option("--json", "as_json", is_flag=True)
def validate(paths, output, k, bootstrap, as_json):
    """Predicted rankings (RANKING... TRUTH_DIR) against true C(k): Spearman, Kendall, top-1 recovered, top-k
    overlap, NDCG with bootstrap intervals, beside baselines. Writes report.md/.html/.json and plots."""
    from .report import validate as run_validate

    if len(paths) < 2:
        raise LayerscoutError("give one or more ranking files, then the truth dir")
    report = run_validate(list(paths[:-1]), paths[-1], output, k=k, n_boot=bootstrap)
    _emit(report, as_json, lambda: click.echo((Path(output) / "report.md").read_text()))


@cli.command(epilog="""Examples:

\b
  layerscout fit calibration/runs/qwen3-L12-grpo calibration/runs/llama-L12-grpo --output predictor.json
  layerscout rank Qwen/Qwen3-4B --task math --predictor predictor.json
""")
@click.argument("sweep_dirs", nargs=-1, required=True)
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="where to write the predictor JSON")
@click.option("--max-signals", type=int, default=2, show_default=True, help="most signals one design combines")
@click.option("--json", "as_json", is_flag=True)
def fit(sweep_dirs, output, max_signals, as_json):
    """Fit the layer predictor on your calibration sweeps (each with contributions.json and the probe's
    ranking.json): the design is chosen by leave-one-model-out, then fitted on all sweeps."""
    from .predictor import fit_predictor
    from .records import write_json

    _writable_parent(output)
    fitted, _ = fit_predictor(list(sweep_dirs), max_signals=max_signals)
    data = fitted.to_dict()
    write_json(output, data)
    lomo = data["provenance"]["lomo_spearman"]
    _emit(data, as_json, lambda: click.echo(f"chose {data['label']}; leave-one-model-out Spearman "
                                            f"{', '.join(f'{k} {_num(v)}' for k, v in lomo.items())}; wrote {output}"))


def _num(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def _writable_parent(path: str) -> None:
    """Fail before the work when the output file's dir cannot be written."""
    import os

    parent = Path(path).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise LayerscoutError(f"cannot write {path}: {parent} is not a writable directory")


@cli.command(epilog="Example:\n\n  layerscout compare truth/math truth/code --output cmp/")
@click.argument("truth_dirs", nargs=-1, required=True)
@click.option("--output", default=None, type=click.Path(file_okay=False),
              help="also write compare.md and compare.json here")
@click.option("--json", "as_json", is_flag=True)
def compare(truth_dirs, output, as_json):
    """Rank correlation (Spearman) of C(k) across sweeps: tasks, algorithms, seeds of one model."""
    from .report import compare as run_compare

    result = run_compare(list(truth_dirs), output)
    _emit(result, as_json, lambda: click.echo(result["markdown"]))


@cli.command(epilog="""Examples:

\b
  layerscout score --task humaneval --input completions.jsonl --json
  layerscout score --task code --dataset my_problems.jsonl --input completions.jsonl
  layerscout score --task math --input answers.jsonl

\b
Input: one JSON object per line, {"id": "HumanEval/0", "completion": "    return False\\n"}; ids are the task's
item ids (HumanEval/N, a dataset's "id", or a math question's text). Other keys in a line (e.g. "answer") stand
in for the item's columns.
""")
@click.option("--task", required=True, help="task recipe name or YAML (humaneval, code, math, ...)")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="JSONL of {id, completion}")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="recipe field, e.g. -o task_options.reward=all_pass -o task_options.sandbox.timeout_s=2")
@click.option("--dataset", help="the task's local dataset file instead of its default data")
@click.option("--json", "as_json", is_flag=True, help="print a list of {id, reward, status, detail}")
def score(task, input_path, overrides, dataset, as_json):
    """Score given completions with a task's reward: one reward per input line, in order, and what happened."""
    from .recipes import build_task, load_recipe
    from .scoring import read_completions, score_completions

    records = read_completions(input_path)
    task_obj = build_task(load_recipe(task, list(overrides) + _dataset_overrides(dataset, None, None)))
    results = score_completions(task_obj, records)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            click.echo(f"{r['reward']:.4g}\t{r['id']}\t{r['detail']}")


# ---------------------------------------------------------------- organisms

@cli.group()
def organism():
    """Small models trained here from scratch so RL has headroom (the embedded default is one)."""


@organism.command("build", epilog="""Examples:

\b
  layerscout organism build --arch llama --layers 8 --seed 1 --output runs/llama8
  layerscout organism build --task code --layers 12 --output runs/code12   # templated one-line functions
""")
@click.option("--arch", default="qwen3", show_default=True, type=click.Choice(["qwen3", "qwen2", "llama"]))
@click.option("--layers", "num_layers", default=8, show_default=True, type=int)
@click.option("--task", default="math", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--output", required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def organism_build(arch, num_layers, task, seed, output, as_json):
    """Train a small model by SFT until its held-out accuracy is partial (about 20-60 %)."""
    import dataclasses

    from .organisms import build_organism, task_organism

    config = dataclasses.replace(task_organism(task), arch=arch, num_layers=num_layers, task=task, seed=seed)
    report = build_organism(config, output)
    _emit(report, as_json, lambda: click.echo(json.dumps(report, indent=2, default=str)))


# ---------------------------------------------------------------- registries

@cli.group()
def tasks():
    """Tasks: dataset + prompt format + verifiable reward."""


@tasks.command("ls")
@click.option("--json", "as_json", is_flag=True)
def tasks_ls(as_json):
    """List registered tasks."""
    from .tasks import list_tasks

    names = list_tasks()
    _emit({"tasks": names}, as_json, lambda: click.echo("\n".join(names)))


@cli.group()
def signals():
    """Per-layer probe signals."""


@signals.command("ls")
@click.option("--json", "as_json", is_flag=True)
def signals_ls(as_json):
    """List the signals a probe can compute."""
    from .signals import list_signals

    sigs = list_signals()
    _emit({"signals": [{"name": s.name, "help": s.help} for s in sigs]}, as_json,
          lambda: [click.echo(f"{s.name:<22} {s.help}") for s in sigs])


@cli.group()
def probes():
    """Probe recipes (probes/*.yaml): list, copy for editing, validate."""


@probes.command("ls")
def probes_ls():
    """List built-in recipes."""
    from .recipes import builtin_recipes

    for name, path in builtin_recipes().items():
        click.echo(f"{name:<10} {path}")


@probes.command("cp", epilog="Example:\n\n  layerscout probes cp math ./my_math.yaml")
@click.argument("name")
@click.argument("dest", type=click.Path(dir_okay=False))
def probes_cp(name, dest):
    """Copy a built-in recipe to DEST for editing."""
    import shutil
    from pathlib import Path

    from .recipes import resolve

    if Path(dest).exists():
        raise LayerscoutError(f"{dest} exists; not overwriting")
    shutil.copyfile(resolve(name), dest)
    click.echo(f"wrote {dest}")


@probes.command("validate", epilog="Example:\n\n  layerscout probes validate ./my_math.yaml")
@click.argument("recipe")
def probes_validate(recipe):
    """Check a recipe (keys, types, signal and task names) without running it; reports every problem."""
    from .recipes import build_task, load_recipe

    r = load_recipe(recipe)
    build_task(r)
    click.echo(f"ok: task {r.task} v{r.version}, {len(r.probe.signals)} signals")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def env(as_json):
    """Print the versions that every record stores."""
    from .records import git_commit, versions

    data = {"versions": versions(), "git_commit": git_commit()}
    _emit(data, as_json, lambda: [click.echo(f"{k:<14} {v}") for k, v in {**data["versions"],
                                                                         "git": data["git_commit"]}.items()])


def main() -> None:
    cli(prog_name="layerscout")


if __name__ == "__main__":
    sys.exit(main())

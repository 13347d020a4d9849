"""`layerscout` command line: a thin click layer over the library. Each command parses options, calls one
public function, and prints a table (stdout) or `--json`; progress goes to stderr. Heavy libraries are
imported inside commands so `layerscout --help` stays instant."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import click

from .errors import LayerscoutError

MODEL_HELP = "hub id, local model dir or .gguf file (default: the embedded default organism)"
_results = [sys.stdout]  # where results go; everything else printed during a command goes to stderr


class _Command(click.Command):
    """While a command runs, stdout is stderr (TRL's per-step log dicts, library prints); only `_echo` reaches
    stdout. Its --help, printed while its arguments are parsed, still goes to stdout."""

    def invoke(self, ctx):
        with contextlib.redirect_stdout(sys.stderr):
            return super().invoke(ctx)


class _Group(click.Group):
    """Turns LayerscoutError (and a few library errors users cause) into one line on stderr, exit 2. Results
    reach stdout only from the main process of a multi-process launch."""

    command_class = _Command
    group_class = type  # subgroups are _Group too

    def invoke(self, ctx):
        main_process = os.environ.get("RANK", "0") == "0"  # under accelerate launch / torchrun, one result
        _results.append(sys.stdout if main_process else open(os.devnull, "w"))
        try:
            return super().invoke(ctx)
        except LayerscoutError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        finally:
            _results.pop()
            if ctx.meta.get("layerscout.logging"):
                configure_logging()  # remove the handlers --verbose / --log-file added


def _echo(message="", **kw) -> None:
    """click.echo to the real stdout: the one place a command's result is printed."""
    click.echo(message, file=_results[-1], **kw)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Examples:\n\n  layerscout rank --task math\n\n  layerscout rank Qwen/Qwen3-4B --task math --json")
@click.option("--debug", is_flag=True, help="show tracebacks instead of one-line errors")
@click.version_option(package_name="layerscout")
@click.pass_context
def cli(ctx, debug):
    """Predict which decoder layers of an LLM are worth RL-training alone, then train only those."""
    from .records import git_commit

    ctx.obj = {"debug": debug}
    git_commit()  # the code this process runs, before any commit made while it works
    # TRL asks every step through transformers' deprecated name; nothing the user could change
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def _emit(data: dict, as_json: bool, table) -> None:
    if as_json:
        _echo(json.dumps(data, indent=2, default=str))
    else:
        table()


# ---------------------------------------------------------------- flags every command spells the same way

def configure_logging(verbose: bool = False, log_file: str | None = None) -> None:
    """`layerscout` loggers (and warnings) to stderr at INFO with --verbose, and everything at DEBUG (TRL's per-step
    metrics included, and transformers' and TRL's own warnings) to --log-file. Replaces handlers it set before."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = ("layerscout", "py.warnings", "transformers", "trl")
    for name in names:
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if getattr(h, "_layerscout", False)]:
            logger.removeHandler(h)
            h.close()
    handlers = []
    if verbose:
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.INFO)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handlers.append((console, names[:2]))
    if log_file:
        file = logging.FileHandler(log_file)
        file.setLevel(logging.DEBUG)
        file.setFormatter(fmt)
        handlers.append((file, names))
    for handler, targets in handlers:
        handler._layerscout = True
        for name in targets:
            logging.getLogger(name).addHandler(handler)
    logging.getLogger("layerscout").setLevel(logging.DEBUG if handlers else logging.NOTSET)
    logging.captureWarnings(bool(handlers))


def _quiet_option(ctx, param, quiet: bool) -> bool:
    """--quiet silences transformers' own bars too (loading weights)."""
    if quiet:
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()
    return quiet


def _log_option(ctx, param, value):
    if value:
        if param.name == "log_file":
            from .records import check_writable

            check_writable(value)
        settings = ctx.meta.setdefault("layerscout.logging", {})
        settings[param.name] = value
        configure_logging(**settings)


SHARED = {
    "task": [click.option("--task", help="a probe recipe (math), a registered task (`layerscout tasks ls`) or a "
                                         "recipe YAML; default: math, or custom with --reward")],
    "dataset": [
        click.option("--dataset", help="your prompts: a local .jsonl/.json/.parquet/.csv file or a hub dataset id "
                                       "(with --reward: any columns; without: the math task's question/answer)"),
        click.option("--reward", help="your reward function, TRL's signature f(prompts, completions, **columns) -> "
                                      "list[float]: module:function or path/to/file.py:function"),
        click.option("--prompt-column", help="with --reward: the prompt column of --dataset (default: prompt)"),
        click.option("--question-column", help="math --dataset: the question column (default: question)"),
        click.option("--answer-column", help="math --dataset: the answer column (default: answer)")],
    "algo": [click.option("--algo", type=click.Choice(["grpo", "dr_grpo", "gigpo"]),
                          help="grpo | dr_grpo (Dr. GRPO: no std division) | gigpo (multi-turn tasks, e.g. --task "
                               "agent); default grpo")],
    "seed": [click.option("--seed", type=int, help="seed of prompt draws, sampling and training (same seed, same "
                                                   "result on CPU)")],
    "device": [click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")],
    "dtype": [click.option("--dtype", default="auto", show_default=True,
                           type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
                           help="the weights' dtype; auto: float32, computed under bf16 autocast on CUDA (steps and "
                                "trained blocks are held in fp32 whatever the weights)")],
    "dry_run": [click.option("--dry-run", is_flag=True,
                             help="print model size, planned rollouts and estimated peak memory, then exit (reads "
                                  "only the model's config)")],
    "json": [click.option("--json", "as_json", is_flag=True,
                          help="print the result as one JSON document on stdout (logs and progress go to stderr)")],
    "quiet": [click.option("--quiet", is_flag=True, callback=_quiet_option, help="no progress bars")],
    "log": [click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_log_option,
                         help="log what happens (INFO) to stderr"),
            click.option("--log-file", type=click.Path(dir_okay=False), expose_value=False, callback=_log_option,
                         help="also write every log record (DEBUG: TRL's per-step metrics too) to this file")],
}


def _emit_plan(plan: dict, as_json: bool) -> None:
    from .dryrun import format_plan

    _emit(plan, as_json, lambda: _echo(format_plan(plan)))


def shared_options(*names):
    """Add the shared flags `names` (keys of SHARED) with one spelling and one help text on every command, e.g.
    `@shared_options("task", "dataset", "seed", "device", "dtype", "json", "quiet", "log")`; the command reads
    the task flags with `_task_spec(opts)`."""
    def deco(f):
        for name in reversed(names):
            for option in reversed(SHARED[name]):
                f = option(f)
        return f

    return deco


TASK_FLAGS = ("dataset", "reward", "prompt_column", "question_column", "answer_column")


def _task_spec(opts: dict, task: str | None = None) -> tuple[str, list[str]]:
    """(recipe name or path, overrides) from the shared task flags (popped from `opts`)."""
    from .recipes import task_spec

    flags = {k: opts.pop(k) for k in TASK_FLAGS}
    return task_spec(task or opts.pop("task", None), **flags)


# ---------------------------------------------------------------- rank

@cli.command(epilog="""Examples:

  layerscout rank --task math                       # default organism, built on first use

  layerscout rank Qwen/Qwen3-4B --task math --json --output ranking.json

  layerscout rank ./SmolLM2-135M-Instruct.Q4_1.gguf --probe my_math.yaml -o num_prompts=16

  layerscout rank MODEL --dataset my_prompts.jsonl --reward my_reward.py:score --algo dr_grpo

  layerscout rank Qwen/Qwen3-8B --dry-run --device cuda -o gradient_checkpointing=true

  layerscout rank --task agent --algo gigpo         # the agent organism: GiGPO over played games

  layerscout rank MODEL --task math --predictor my_predictor.json   # refitted with `layerscout fit`

  layerscout rank MODEL --from-run runs/full   # your full-parameter RL result of MODEL: delta grafting
""")
@click.argument("model", required=False)
@click.option("--probe", "probe_file", type=click.Path(dir_okay=False), help="probe recipe YAML (instead of --task)")
@click.option("--predictor", type=click.Path(dir_okay=False),
              help="the fitted predictor that scores the blocks (a `layerscout fit` JSON; default: the one shipped in "
                   "probes/predictor.json); -o predictor=null uses the recipe's score_weights rule instead")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a recipe field, e.g. -o num_prompts=16 -o task_options.generator=chain_sum")
@click.option("--from-run", "from_run", type=click.Path(file_okay=False),
              help="rank by delta grafting from this full-parameter RL result of MODEL (a transformers model dir, "
                   "e.g. from `layerscout train --full`) instead of probing: forward passes only")
@click.option("--output", type=click.Path(dir_okay=False), help="write the ranking JSON here")
@shared_options("task", "dataset", "algo", "seed", "device", "dtype", "json", "quiet", "log", "dry_run")
def rank(model, probe_file, predictor, from_run, overrides, output, **opts):
    """Run a short RL probe on MODEL and rank its decoder layers for single-layer RL."""
    from .records import check_writable, write_json_or_rescue

    if from_run and (predictor or opts["dry_run"]):
        raise LayerscoutError("--from-run ranks by delta grafting: it takes neither --predictor nor --dry-run")
    recipe, task_overrides = _task_spec(opts, probe_file)
    algo = [f"loss_type={opts['algo']}"] if opts["algo"] else []
    algo += [f"predictor={json.dumps(predictor)}"] if predictor else []
    if opts["dry_run"]:
        from .dryrun import plan_rank
        from .recipes import load_recipe

        seed = [f"seed={opts['seed']}"] if opts["seed"] is not None else []
        loaded = load_recipe(recipe, list(overrides) + task_overrides + algo + seed)
        return _emit_plan(plan_rank(model, loaded, opts["device"], opts["dtype"]), opts["as_json"])
    if output:
        check_writable(output)  # before the probe: a bad path fails now, not after minutes of work
    from .graft import rank_from_run
    from .probe import rank_layers

    ranking = (functools.partial(rank_from_run, from_run) if from_run else rank_layers)(
        model, recipe, overrides=list(overrides) + task_overrides + algo, seed=opts["seed"], device=opts["device"],
        dtype=opts["dtype"], progress=not opts["quiet"])
    data = ranking.to_dict()
    if output:
        write_json_or_rescue(output, data)
    _emit(data, opts["as_json"], lambda: _print_ranking(data))


def _print_ranking(data: dict) -> None:
    main = [s for s in ("graft_gain", "knockout_loss", "lookahead_gain", "grad_norm_rel", "grad_snr", "fisher_trace", "attribution",
                        "update_norm", "spectral_snr") if s in data["layers"][0]["signals"]]
    head = f"{'layer':>5} {'rank':>4} {'score':>6} " + " ".join(f"{s:>14}" for s in main)
    scoring = data["config"].get("scoring", {})
    rule = (f"predictor {scoring['design']} ({scoring['version']})" if scoring.get("rule") == "predictor"
            else f"delta grafting {scoring['score']}, from {data['config']['from_run']['path']}"
            if scoring.get("rule") == "graft" else "score_weights " + ", ".join(f"{k} {v:g}" for k, v in scoring.get("weights", {}).items()))
    _echo(f"model {data['model']}  task {data['task']}  algo {data['algo']}  seed {data['seed']}  score: {rule}")
    _echo(head)
    for row in data["layers"]:
        vals = " ".join(f"{row['signals'][s]:>14.4g}" for s in main)
        _echo(f"{row['index']:>5} {row['rank']:>4} {row['score']:>6.3f} {vals}")
    c, r = data["cost"], data["rollouts"]
    _echo(f"top layer: {data['top_layer']}  |  mean reward {r['mean_reward']:.2f}, "
               f"{r['informative_groups']}/{r['prompts']} groups informative  |  {c['seconds']:.1f} s, "
               f"{c['generated_tokens']} generated tokens, {c['forward_backward_passes']} fwd+bwd passes, "
               f"{c['forward_passes']} forward passes" + (f", {c['rl_steps']} RL steps" if c.get("rl_steps") else ""))


# ---------------------------------------------------------------- RL runs

def _rl_config(config_file, overrides, report_to=None, **fields):
    """RLConfig from an optional YAML file, then -o KEY=VALUE overrides, then explicit flags."""
    from .config import RLConfig, apply_overrides, from_dict, load_yaml

    data = load_yaml(config_file) if config_file else {}
    data = apply_overrides(data, list(overrides) + _report_to_override(report_to))
    data.update({k: v for k, v in fields.items() if v is not None})
    return from_dict(RLConfig, data, source=config_file or "options")


def _writable_dir(path: str) -> str:
    from .records import check_writable

    check_writable(path, kind="dir")
    return path


@cli.command(epilog="""Examples:

\b
  layerscout train --task math --auto-layer --top-k 2 --steps 20 --output runs/auto
  layerscout train --task math --auto-layer --verify 3 --steps 40 --output runs/verified
  layerscout train Qwen/Qwen3-4B --task math --auto-layer --ranking ranking.json --output runs/q4
  layerscout train --task math --layers 3,4 --output runs/l34
  layerscout train --task math --full --algo dr_grpo --output runs/full --resume
  layerscout train ./my-model --task agent --algo gigpo --layers 4 --output runs/agent-l4
  layerscout train --layers 3 --report-to tensorboard -o trl.gradient_accumulation_steps=2 --output runs/l3
  layerscout train MODEL --auto-layer --dataset prompts.jsonl --reward my_reward.py:score --output runs/mine
  accelerate launch --num_processes 4 -m layerscout.cli train MODEL --layers 12 --output runs/l12
""")
@click.argument("model", required=False)
@click.option("--auto-layer", is_flag=True, help="train the top-k blocks of a ranking (probed now, or --ranking)")
@click.option("--top-k", type=int, default=1, show_default=True, help="with --auto-layer: how many blocks")
@click.option("--ranking", "ranking_file", type=click.Path(dir_okay=False), help="with --auto-layer: ranking JSON")
@click.option("--force", is_flag=True, help="with --ranking: use a ranking made on another model (recorded in the "
                                            "run's report as ranking_override)")
@click.option("--verify", type=int, metavar="K",
              help="with --auto-layer: first a short run on each of the ranking's top K blocks alone, then train the "
                   "one with the best held-out gain (the ranking's top unless another beats it by > 2 paired SE; "
                   "with --top-k N, the pick plus the ranking's next N-1). K=1 verifies nothing: it only adds a "
                   "short run of the top block")
@click.option("--verify-steps", type=int, help="with --verify: steps of each short run (default: a quarter of --steps)")
@click.option("--layers", help="explicit blocks: 12,13 | 0-4 | ::3")
@click.option("--full", is_flag=True, help="full-parameter RL (the C(k) reference run)")
@click.option("--steps", type=int, help="optimizer steps (RLConfig.max_steps)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="RLConfig YAML; its `trl:` block passes any other trl.GRPOConfig field through")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="RLConfig field, e.g. -o learning_rate=3e-5 -o trl.gradient_checkpointing=true")
@click.option("--report-to", help="TRL/transformers loggers: tensorboard, wandb, trackio, ... (trl.report_to)")
@click.option("--output", required=True, type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True, help="continue a killed run from its last complete checkpoint (the same "
                                             "settings only; a finished run is reported and left untouched)")
@shared_options("task", "dataset", "algo", "seed", "device", "dtype", "json", "quiet", "log", "dry_run")
def train(model, auto_layer, top_k, ranking_file, force, verify, verify_steps, layers, full, steps, config_file,
          overrides, report_to, output, resume, **opts):
    """RL-train only the chosen decoder blocks (GRPO / Dr. GRPO via TRL; GiGPO on multi-turn tasks), scoring
    held-out before and after. Under `accelerate launch` it trains on every process (data parallel); only the
    main process writes."""
    chosen = [flag for flag, on in (("--auto-layer", auto_layer), ("--layers", layers), ("--full", full)) if on]
    if len(chosen) != 1:
        raise LayerscoutError("choose exactly one of --auto-layer, --layers, --full"
                              + (f" (got {' and '.join(chosen)})" if chosen else ""))
    if not auto_layer and (ranking_file or top_k != 1 or force or verify is not None):
        raise LayerscoutError("--ranking, --top-k, --force and --verify only apply with --auto-layer")
    if verify_steps is not None and verify is None:
        raise LayerscoutError("--verify-steps only applies with --verify")
    if top_k < 1:
        raise LayerscoutError(f"--top-k must be >= 1; got {top_k}")
    seed, progress = opts["seed"], not opts["quiet"]
    cfg = _rl_config(config_file, overrides, loss_type=opts["algo"], max_steps=steps, seed=seed, report_to=report_to)
    recipe, task_overrides = _task_spec(opts)
    if opts["dry_run"]:
        return _emit_plan(_plan_train(model, recipe, task_overrides, cfg, auto_layer, top_k, layers, full,
                                      opts["device"], opts["dtype"]), opts["as_json"])
    from .training import check_output_dir

    check_output_dir(output, resume)  # before any model is loaded
    if auto_layer:
        from .autolayer import train_auto

        record = train_auto(model, recipe, top_k=top_k, ranking=ranking_file, force=force, config=cfg,
                            output_dir=output, resume=resume, seed=seed, device=opts["device"], dtype=opts["dtype"],
                            progress=progress, overrides=task_overrides, verify=verify, verify_steps=verify_steps)
    else:
        from .config import ModelSpec
        from .models import load_model, num_layers, parse_layers
        from .recipes import build_task, load_recipe
        from .training import train_layers

        loaded = load_recipe(recipe, task_overrides)
        task = build_task(loaded)  # a bad task fails before the model loads
        pair = load_model(ModelSpec(name_or_path=model, device=opts["device"], dtype=opts["dtype"]), task=loaded.task)
        picked = None if full else parse_layers(layers, num_layers(pair[0]))
        record = train_layers(pair, task, picked, cfg, output, resume=resume, progress=progress)
    _emit(record, opts["as_json"], lambda: _print_run(record, output))


def _plan_train(model, recipe, task_overrides, cfg, auto_layer, top_k, layers, full, device, dtype) -> dict:
    """The dry-run of `train`: with --auto-layer, the probe (the recipe's) and a top_k-block run."""
    from .dryrun import model_shape, plan_rank, plan_train
    from .models import parse_layers
    from .recipes import build_task, load_recipe

    loaded = load_recipe(recipe, task_overrides)
    picked = None if full else list(range(top_k)) if auto_layer else parse_layers(layers, model_shape(model, task=loaded.task).num_layers)
    plan = plan_train(model, build_task(loaded), cfg, picked, device, dtype)
    if auto_layer:
        plan["layers"] = f"top {top_k} of the ranking"
        plan["estimates"] = {f"{top_k}-block run": plan.pop("memory"),
                             "probe": plan_rank(model, loaded, device, dtype)["memory"]}
        capacity = plan["device_memory_bytes"]
        plan["fits"] = None if capacity is None else max(e["peak_bytes"] for e in plan["estimates"].values()) <= capacity
    return plan


def _report_to_override(report_to: str | None, prefix: str = "") -> list[str]:
    """--report-to tensorboard,wandb -> the trl.report_to override (a list)."""
    if not report_to:
        return []
    return [f"{prefix}trl.report_to={json.dumps([x.strip() for x in report_to.split(',') if x.strip()])}"]


def _print_run(record: dict, output: str) -> None:
    base, final = record.get("base_score"), record.get("final_score")
    if "verify" in record:
        v = record["verify"]
        tried = ", ".join(f"{c['layer']} ({c['gain']:+.3f} ± {c['se']:.3f})" for c in v["candidates"])
        cost = v["cost"]
        ratio = f" = {cost['seconds_ratio']:.2f} x the main run" if cost["seconds_ratio"] is not None else ""
        _echo(f"verify: blocks {tried} after {v['verify_steps']} steps each -> block {v['pick']}, "
              f"{'as' if v['matched_prediction'] else 'not as'} predicted; {cost['verify_seconds']:.0f} s{ratio}")
    _echo(f"trained blocks {record.get('layers') or 'all'} for {record.get('steps')} steps "
               f"({record.get('algo')}): held-out {base:.3f} -> {final:.3f}; wrote {output}")


@cli.command("eval", epilog="""Examples:

\b
  layerscout eval runs/auto --task math --json
  layerscout eval MODEL --dataset prompts.jsonl --reward my_reward.py:score -n 128
""")
@click.argument("model", required=False)
@click.option("-n", "n", type=int, default=64, show_default=True, help="held-out prompts")
@click.option("--samples", type=int, default=1, show_default=True, help="completions per prompt (1 = greedy)")
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@shared_options("task", "dataset", "seed", "device", "dtype", "json", "quiet", "log")
def eval_cmd(model, n, samples, max_new_tokens, **opts):
    """Held-out score of MODEL on a task (accuracy / pass rate). The held-out prompts are drawn with --seed
    (default 0)."""
    from .config import ModelSpec
    from .evaluate import evaluate
    from .models import load_model, model_name
    from .recipes import build_task, load_recipe

    recipe = load_recipe(*_task_spec(opts))
    task = build_task(recipe)
    m, tok = load_model(ModelSpec(name_or_path=model, device=opts["device"], dtype=opts["dtype"]), task=recipe.task)
    result = {"model": model_name(m), "task": recipe.task,
              **evaluate(m, tok, task, n=n, seed=opts["seed"] or 0, num_samples=samples,
                         max_new_tokens=max_new_tokens)}
    _emit(result, opts["as_json"], lambda: _echo(f"{result['model']} on {result['task']}: score {result['score']:.3f} "
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
    _echo(f"wrote {output}")


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
    _echo(export_ranking(ranking, m, fmt, top_k), nl=False)


# ---------------------------------------------------------------- ground truth

@cli.command(epilog="""Examples:

\b
  layerscout calibrate --task math --algo grpo --seeds 3 --steps 100 --output truth/qwen3
  layerscout calibrate Qwen/Qwen3-1.7B --layers ::3 --output truth/q17 --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT
  layerscout calibrate --config sweep.yaml --launcher ray --ray-address auto --json
  layerscout calibrate MODEL --dataset prompts.jsonl --reward my_reward.py:score --seeds 2 --output truth/mine
  accelerate launch --num_processes 4 -m layerscout.cli calibrate --config truth/mine/sweep.json --shard 0/9
  layerscout calibrate --config calibration/sweeps/agent-qwen3-gigpo.yaml --shard 0/39   # seed 0's full run
""")
@click.argument("model", required=False)
@click.option("--layers", help="blocks to scan: all | 0,4,8 | 0-4 | ::3")
@click.option("--seeds", type=click.IntRange(min=1), help="number of seeds: 0..N-1 (or --seed S for one)")
@click.option("--steps", type=int, help="GRPO steps of every run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="CalibrationConfig YAML or sweep.json")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="CalibrationConfig field, e.g. -o rl.learning_rate=1e-4")
@click.option("--report-to", help="TRL/transformers loggers for every run: tensorboard, wandb, ... (rl.trl.report_to)")
@click.option("--output", type=click.Path(file_okay=False), help="sweep dir (default: the config's output)")
@click.option("--launcher", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", help="Ray cluster address (default: start a local Ray)")
@click.option("--shard", help="i/n: run only jobs j with j % n == i (Slurm job arrays)")
@click.option("--print-jobs", is_flag=True,
              help="write the sweep manifest to the output dir, print the job list (with commands) as JSON, exit")
@shared_options("task", "dataset", "algo", "seed", "device", "dtype", "json", "quiet", "log", "dry_run")
def calibrate(model, layers, seeds, steps, config_file, overrides, report_to, output, launcher, ray_address, shard,
              print_jobs, **opts):
    """Ground truth: a full-parameter run and one single-block run per block, per seed -> C(k). Full runs go
    first; a seed whose full run gains under min_gain_se paired standard errors gets no block runs. Each run
    writes its record the moment it finishes; rerunning skips finished runs."""
    from . import calibrate as cal
    from .config import apply_overrides, from_dict

    seed = opts["seed"]
    if seeds is not None and seed is not None:
        raise LayerscoutError("give --seeds N or --seed S, not both")
    data = cal.load_config(config_file).__dict__ if config_file else {}
    task_given = opts["task"] or opts["reward"]
    task, task_overrides = _task_spec(opts)
    data = apply_overrides(dict(data), list(overrides) + _report_to_override(report_to, "rl.") + task_overrides)
    flags = {"model": model, "task": task if task_given else None, "algo": opts["algo"], "layers": layers,
             "steps": steps, "output": output,
             "device": None if opts["device"] == "auto" else opts["device"],
             "dtype": None if opts["dtype"] == "auto" else opts["dtype"],
             "seeds": list(range(seeds)) if seeds is not None else [seed] if seed is not None else None}
    data.update({k: v for k, v in flags.items() if v is not None})
    explicit_output = output or config_file or any(o.split("=", 1)[0].strip() == "output" for o in overrides)
    if print_jobs and not explicit_output:
        raise LayerscoutError("--print-jobs writes the sweep manifest that the job commands read: give --output DIR")
    config = from_dict(cal.CalibrationConfig, data, source=config_file or "options")
    if opts["dry_run"]:
        from .dryrun import plan_calibrate

        return _emit_plan(plan_calibrate(config), opts["as_json"])
    _writable_dir(config.output)  # before any model is loaded
    part = cal.parse_shard(shard) if shard else None
    if print_jobs:
        _echo(json.dumps(cal.select_shard(cal.jobs(config), part), indent=2))
        return
    result = cal.run_calibration(config, launcher, part, ray_address, progress=not opts["quiet"])
    summary = result["summary"]
    data = {"ran": result["ran"], "skipped_seeds": result["skipped"], "missing": summary.get("missing"),
            "flat_seeds": summary.get("flat_seeds"), "seed_spearman": summary.get("seed_spearman"),
            "noise_ceiling": summary.get("noise_ceiling"), "disagreement": summary.get("disagreement"),
            "contributions": f"{config.output}/contributions.json"}
    notes = [f"seed {s}: {why}" for s, why in (data["flat_seeds"] or {}).items()]
    notes += [data["disagreement"]] if data["disagreement"] else []
    _emit(data, opts["as_json"], lambda: _echo(
        f"ran {len(data['ran'])} run(s), {len(data['missing'] or [])} missing, skipped seeds "
        f"{data['skipped_seeds'] or 'none'}; seed-to-seed Spearman of C: {data['seed_spearman']}"
        f"{''.join('; ' + n for n in notes)}; wrote {data['contributions']}"))


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
    _writable_dir(output)
    report = run_validate(list(paths[:-1]), paths[-1], output, k=k, n_boot=bootstrap)
    _emit(report, as_json, lambda: _echo((Path(output) / "report.md").read_text()))


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
    from .records import check_writable, write_json

    check_writable(output)  # before the work
    fitted, _ = fit_predictor(list(sweep_dirs), max_signals=max_signals)
    data = fitted.to_dict()
    write_json(output, data)
    lomo = data["provenance"]["lomo_spearman"]
    _emit(data, as_json, lambda: _echo(f"chose {data['label']}; leave-one-model-out Spearman "
                                       f"{', '.join(f'{k} {_num(v)}' for k, v in lomo.items())}; wrote {output}"))


def _num(x) -> str:
    return "–" if x is None else f"{x:.2f}"


@cli.command(epilog="Example:\n\n  layerscout compare truth/math truth/code --output cmp/")
@click.argument("truth_dirs", nargs=-1, required=True)
@click.option("--output", default=None, type=click.Path(file_okay=False),
              help="also write compare.md and compare.json here")
@click.option("--json", "as_json", is_flag=True)
def compare(truth_dirs, output, as_json):
    """Rank correlation (Spearman) of C(k) across sweeps: tasks, algorithms, seeds of one model."""
    from .report import compare as run_compare

    if output:
        _writable_dir(output)
    result = run_compare(list(truth_dirs), output)
    _emit(result, as_json, lambda: _echo(result["markdown"]))


@cli.command(epilog="""Examples:

\b
  layerscout score --task humaneval --input completions.jsonl --json
  layerscout score --task code --dataset my_problems.jsonl --input completions.jsonl
  layerscout score --task math --input answers.jsonl
  layerscout score --dataset prompts.jsonl --reward my_reward.py:score --input completions.jsonl

\b
Input: one JSON object per line, {"id": "HumanEval/0", "completion": "    return False\\n"}; ids are the task's
item ids (HumanEval/N, a dataset's "id", or a math question's text). Other keys in a line (e.g. "answer") stand
in for the item's columns.
""")
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False),
              help="JSONL of {id, completion}")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="recipe field, e.g. -o task_options.reward=all_pass -o task_options.sandbox.timeout_s=2")
@shared_options("task", "dataset", "json", "quiet", "log")
def score(input_path, overrides, **opts):
    """Score given completions with a task's reward: one reward per input line, in order, and what happened.
    (No model runs, so --algo, --seed, --device and --dtype do not apply.)"""
    from .recipes import build_task, load_recipe
    from .scoring import read_completions, score_completions

    records = read_completions(input_path)
    recipe, task_overrides = _task_spec(opts)
    task_obj = build_task(load_recipe(recipe, list(overrides) + task_overrides))
    results = score_completions(task_obj, records)
    if opts["as_json"]:
        _echo(json.dumps(results, indent=2))
    else:
        for r in results:
            _echo(f"{r['reward']:.4g}\t{r['id']}\t{r['detail']}")


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

    _writable_dir(output)
    config = dataclasses.replace(task_organism(task), arch=arch, num_layers=num_layers, task=task, seed=seed)
    report = build_organism(config, output)
    _emit(report, as_json, lambda: _echo(json.dumps(report, indent=2, default=str)))


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
    _emit({"tasks": names}, as_json, lambda: _echo("\n".join(names)))


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
          lambda: [_echo(f"{s.name:<22} {s.help}") for s in sigs])


@cli.group()
def probes():
    """Probe recipes (probes/*.yaml): list, copy for editing, validate."""


@probes.command("ls")
def probes_ls():
    """List built-in recipes."""
    from .recipes import builtin_recipes

    for name, path in builtin_recipes().items():
        _echo(f"{name:<10} {path}")


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
    source = resolve(name)
    if source is None:
        raise LayerscoutError(f"task {name!r} has no recipe file to copy; write one with `task: {name}` (see "
                              "`layerscout probes cp math`)")
    shutil.copyfile(source, dest)
    _echo(f"wrote {dest}")


@probes.command("validate", epilog="Example:\n\n  layerscout probes validate ./my_math.yaml")
@click.argument("recipe")
def probes_validate(recipe):
    """Check a recipe (keys, types, signal and task names) without running it; reports every problem."""
    from .recipes import build_task, load_recipe

    r = load_recipe(recipe)
    build_task(r)
    _echo(f"ok: task {r.task} v{r.version}, {len(r.probe.signals)} signals")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def env(as_json):
    """Print the versions that every record stores."""
    from .records import git_commit, versions

    data = {"versions": versions(), "git_commit": git_commit()}
    _emit(data, as_json, lambda: [_echo(f"{k:<14} {v}") for k, v in {**data["versions"],
                                                                         "git": data["git_commit"]}.items()])


def main() -> None:
    cli(prog_name="layerscout")


if __name__ == "__main__":
    sys.exit(main())

"""`layerscout` command line: a thin click layer over the library. Each command parses options, calls one
public function, and prints a table (stdout) or `--json`; progress goes to stderr. Heavy libraries are
imported inside commands so `layerscout --help` stays instant."""

from __future__ import annotations

import json
import sys

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
@click.option("--seed", type=int, help="probe seed (same seed, same ranking on CPU)")
@_model_options
@click.option("--json", "as_json", is_flag=True, help="print the ranking as JSON on stdout")
@click.option("--output", type=click.Path(dir_okay=False), help="write the ranking JSON here")
@click.option("--quiet", is_flag=True, help="no progress bars")
def rank(model, task, probe_file, overrides, seed, device, dtype, as_json, output, quiet):
    """Run a short RL probe on MODEL and rank its decoder layers for single-layer RL."""
    from .probe import rank_layers
    from .records import write_json

    ranking = rank_layers(model, probe_file or task, overrides=list(overrides), seed=seed, device=device,
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


# ---------------------------------------------------------------- organisms

@cli.group()
def organism():
    """Small models trained here from scratch so RL has headroom (the embedded default is one)."""


@organism.command("build", epilog="Example:\n\n  layerscout organism build --arch llama --layers 8 --seed 1 --output runs/llama8")
@click.option("--arch", default="qwen3", show_default=True, type=click.Choice(["qwen3", "qwen2", "llama"]))
@click.option("--layers", "num_layers", default=8, show_default=True, type=int)
@click.option("--task", default="math", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--output", required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def organism_build(arch, num_layers, task, seed, output, as_json):
    """Train a small model by SFT until its held-out accuracy is partial (about 20-60 %)."""
    from .organisms import OrganismConfig, build_organism

    report = build_organism(OrganismConfig(arch=arch, num_layers=num_layers, task=task, seed=seed), output)
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

"""Validation report: how well predicted layer rankings recover the ground-truth C(k) of a calibration sweep,
next to free baselines (depth priors, each probe signal alone, a random ranking), with bootstrap intervals
over layers; and `compare`, the agreement of C across sweeps (seeds, tasks, algorithms). Writes Markdown, a
self-contained HTML page, JSON and matplotlib PNGs. Cost: n_boot metric calls per cell, seconds in all.
"""

from __future__ import annotations

import base64
import html
import re
from functools import partial
from pathlib import Path

import numpy as np

from .calibrate import MIN_AGREEMENT_BLOCKS, SHARP_AGREEMENT, summarize
from .errors import LayerscoutError
from .ranking import LayerRanking
from .records import write_json

METRICS = ("spearman", "kendall", "top1_recovered", "top1_regret", "topk_overlap", "ndcg")
SPLIT = "split-half (same seed / across)"
LEGEND = (
    "C(k) = (S_k - S_base) / (S_full - S_base): the share of full-parameter RL's held-out gain that RL on block k "
    "alone recovers (1 = as much, > 1 = more, < 0 = worse than the base). S_base: the base model's held-out score; "
    "S_full: after full-parameter RL; S_k: after RL on block k only, same settings. Gain in paired SE: "
    "(S_full - S_base) over the standard error of the per-prompt differences. Seed agreement: mean pairwise "
    "Spearman of C between seeds; noise ceiling: sqrt of its Spearman-Brown reliability for the seed mean, the "
    "best Spearman any ranking can expect against this truth. Split-half: Spearman of C on the even-numbered "
    "prompts against C on the odd ones, within a seed and across seeds; seeds can agree on which of one prompt "
    "set's answers each block flips while the ranking does not hold on other prompts. Top-1 regret: C(best "
    "block) - C(block ranked first). Intervals: 95 % bootstrap over layers (random ranking: the central 95 % of "
    "random rankings).")


def validate(rankings: list, truth_dir: str | Path, output_dir: str | Path, k: int = 3, n_boot: int = 1000,
             seed: int = 0) -> dict:
    """Score each ranking (a LayerRanking or a path to its JSON) and the baselines against `truth_dir`'s C(k).

    Only blocks with a defined C are compared; missing runs and undefined seeds are listed, not fatal. A
    ranking for another model or depth is an error; one made under another task version is marked stale.
    Writes report.md, report.html, report.json and PNGs to `output_dir`; returns report.json's content.
    Example: `validate(["ranking.json"], "calibration/runs/qwen3-L8", "reports/qwen3-L8")["rows"][0]`.
    """
    truth = summarize(truth_dir, write=False)
    blocks = [x["index"] for x in truth["layers"] if x["contribution"] is not None]
    if len(blocks) < 2:
        raise LayerscoutError(f"{truth_dir}: C is defined for {len(blocks)} block(s); need at least 2 to rank "
                              f"(missing: {len(truth['missing'])} runs, undefined seeds: {truth['undefined_seeds']})")
    named = _named_rankings(rankings)
    for name, ranking in named:
        _check_same_model(name, ranking, truth, truth_dir)
    if not 1 <= k <= len(blocks):
        raise LayerscoutError(f"k must be in 1..{len(blocks)} (blocks with a defined C); got {k}")
    true_c = np.array([x["contribution"] for x in truth["layers"] if x["contribution"] is not None])
    metrics = _metrics(k)
    score = partial(_score_row, true_c=true_c, metrics=metrics, n_boot=n_boot, seed=seed)

    rows = [score(name, "ranking", _vector(r, blocks, lambda s: s.score), note=_stale(r, truth))
            for name, r in named]
    rows += [score(name, "baseline", pred) for name, pred in _priors(truth["n_layers"], blocks)]
    for name, r in named:
        for signal in sorted(r.layers[0].signals):
            sign = -1.0 if not _higher_is_better(signal) else 1.0
            rows.append(score(f"{signal} ({name})", "signal",
                              sign * _vector(r, blocks, lambda s, n=signal: s.signals[n])))
    rows.append(_random_row(true_c, metrics, n_boot, seed))

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [p for name, r in named for p in _plots(name, r, blocks, truth, out)]
    report = {"truth": {key: truth[key] for key in ("directory", "model", "task", "task_versions", "algo",
                                                    "n_layers", "seeds", "s_base", "s_full", "gain",
                                                    "undefined_seeds", "weak_seeds", "block_gain_z", "flat_seeds",
                                                    "seed_spearman", "reliability",
                                                    "noise_ceiling", "split_half", "agreement_blocks", "missing")}
                        | {"constant_answer": truth.get("constant_answer")},  # absent in sweeps before it
              "blocks": blocks, "true_contribution": true_c.tolist(), "k": k, "n_boot": n_boot, "seed": seed,
              "rows": rows, "plots": [p.name for p in plots]}
    report["verdict"] = verdict(report)
    write_json(out / "report.json", report)
    (out / "report.md").write_text(_markdown(report))
    (out / "report.html").write_text(_html(report, plots))
    return report


def verdict(report: dict) -> str:
    """One line per ranking: does it beat both free priors (middle of the stack, shallower first) on Spearman,
    and how close is it to the noise ceiling; then a warning where the truth's ranking does not hold from one half
    of its prompts to the other (a high Spearman against it is then partly luck of the prompt set)."""
    rows = {r["name"]: r["metrics"] for r in report["rows"]}
    priors = {name: rows[name]["spearman"]["value"] for name in ("depth prior (middle)", "shallower first")}
    ceiling = report["truth"]["noise_ceiling"]
    lines = []
    for r in (r for r in report["rows"] if r["kind"] == "ranking"):
        rho, regret = r["metrics"]["spearman"]["value"], r["metrics"]["top1_regret"]["value"]
        if rho is None:
            lines.append(f"{r['name']}: no Spearman (a constant ranking or truth)")
            continue
        beaten = [name for name, v in priors.items() if v is None or rho > v]
        head = ("beats both free priors" if len(beaten) == 2 else
                f"beats only the {beaten[0]} prior" if beaten else "beats neither free prior")
        of_ceiling = (f", {100 * rho / ceiling:.0f} % of the noise ceiling {ceiling:.2f}" if ceiling
                      else ", no noise ceiling")
        lines.append(f"{r['name']}: {head} (Spearman {rho:.2f} vs middle {_fmt(priors['depth prior (middle)'])}, "
                     f"shallower-first {_fmt(priors['shallower first'])}){of_ceiling}; top-1 regret {_fmt(regret)}")
    held = report["truth"]["split_half"]["same_seed"]
    if held is not None and held < SHARP_AGREEMENT:
        lines.append(f"but the truth's own ranking holds at only {held:.2f} from the even- to the odd-numbered "
                     "prompts, so these numbers depend on which prompts were scored")
    return "; ".join(lines)


def compare(truth_dirs: list[str | Path], output_dir: str | Path | None = None) -> dict:
    """One row per sweep (gain in paired SE, seed agreement, noise ceiling, split-half agreement, where the best
    blocks sit, the free priors' Spearman), then the Spearman of C between every pair of sweeps of the same depth
    (e.g. math vs code, GRPO vs Dr. GRPO), over the blocks where both define C: how far the ground truth agrees
    with itself.
    The result carries the tables as `markdown`; with `output_dir` it is also written there as compare.md and
    compare.json. Example: `compare(["cal/math", "cal/code"])["matrix"]`."""
    if not truth_dirs:
        raise LayerscoutError("compare needs at least 1 calibration dir")
    summaries = [summarize(d, write=False) for d in truth_dirs]
    c = [{x["index"]: x["contribution"] for x in s["layers"] if x["contribution"] is not None} for s in summaries]
    matrix = [[_common_spearman(a, b) if sa["n_layers"] == sb["n_layers"] else float("nan")
               for b, sb in zip(c, summaries)] for a, sa in zip(c, summaries)]
    labels = _unique_labels([Path(d) for d in truth_dirs])
    sweeps = [sweep_row(label, s) for label, s in zip(labels, summaries)]
    result = {"dirs": [str(d) for d in truth_dirs], "labels": labels, "sweeps": sweeps,
              "matrix": [[_json_float(v) for v in row] for row in matrix],
              "blocks": [sorted(x) for x in c]}
    columns = ("sweep", "model", "algo", "layers", "seeds", "full-run gain (paired SE)", "seed Spearman",
               "noise ceiling", SPLIT, "best blocks (% of depth)", "middle prior", "shallower first")
    table = ("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
             + "".join("| " + " | ".join(str(row[c]) for c in columns) + " |\n" for row in sweeps))
    head = "| | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels) + "\n"
    body = "".join(f"| {label} | " + " | ".join(_fmt(v) for v in row) + " |\n" for label, row in zip(labels, matrix))
    markdown = (f"# Calibration sweeps\n\n{table}\n# Agreement of C(k) across sweeps (Spearman; – where the "
                f"depths differ)\n\n{head}{body}")
    if output_dir is not None:
        write_json(Path(output_dir) / "compare.json", result)
        (Path(output_dir) / "compare.md").write_text(markdown)
    return {**result, "markdown": markdown}


def sweep_row(label: str, summary: dict) -> dict:
    """The one-line description of a sweep in `compare`'s table (strings, for Markdown)."""
    gains = summary["gain"].values()
    z = [g["z"] for g in gains if g["z"] is not None]
    gain = (f"{min(g['gain'] for g in gains):+.3f}…{max(g['gain'] for g in gains):+.3f} "
            f"({min(z):.1f}–{max(z):.1f} SE)" if z else "–")
    priors = summary["priors"] or {}
    return {"sweep": label, "model": Path(summary["model"] or "?").name, "algo": summary["algo"],
            "layers": summary["n_layers"], "seeds": seeds_cell(summary), "full-run gain (paired SE)": gain,
            "seed Spearman": _fmt(summary["seed_spearman"]), "noise ceiling": _fmt(summary["noise_ceiling"]),
            SPLIT: _split_cell(summary), "best blocks (% of depth)": contribution_shape(summary),
            "middle prior": _fmt(priors.get("depth_prior")), "shallower first": _fmt(priors.get("shallower_first"))}


def _split_cell(summary: dict) -> str:
    split = summary["split_half"]
    return f"{_fmt(split['same_seed'])} / {_fmt(split['across_seeds'])}"


def seeds_cell(summary: dict) -> str:
    """How many seeds the C vector stands on, and why any other is not in it yet: "2 of 3 (30 runs to go)",
    "2 of 3 (seed 2 gated at 2.3 SE)", or why one in it is noise: "3 (seed 2 flat: best block 2.5 SE)". A sweep still
    running, a gated seed or a flat one must not pass for a full one."""
    seeds = [str(s) for s in summary["seeds"]]
    defined = [s for s in seeds if s not in summary["undefined_seeds"]]
    gated = [s for s in seeds if s in summary["weak_seeds"] and s in summary["undefined_seeds"]]
    to_go = [j for j in summary["missing"] if j.split("/", 1)[0] not in gated]
    notes = [f"seed {s} gated at {summary['gain'][s]['z']:.1f} SE" for s in gated]
    notes += [f"seed {s} flat: best block {summary['block_gain_z'][s]['best']:.1f} SE" for s in summary["flat_seeds"]]
    notes += [f"{len(to_go)} run{'s' * (len(to_go) != 1)} to go"] if to_go else []
    count = str(len(defined)) if len(defined) == len(seeds) else f"{len(defined)} of {len(seeds)}"
    return count + (f" ({'; '.join(notes)})" if notes else "")


def contribution_shape(summary: dict, top: int = 3) -> str:
    """Where the best blocks sit, e.g. "2, 3, 1 (15–25 %); worst 11 (100 %)"."""
    defined = [x for x in summary["layers"] if x["contribution"] is not None]
    n = summary["n_layers"] or 1
    if len(defined) < 2:
        return "–"
    ranked = sorted(defined, key=lambda x: -x["contribution"])
    depth = [round(100 * x["index"] / max(1, n - 1)) for x in ranked[:top]]
    worst = ranked[-1]
    return (f"{', '.join(str(x['index']) for x in ranked[:top])} ({min(depth)}–{max(depth)} %); worst "
            f"{worst['index']} ({round(100 * worst['index'] / max(1, n - 1))} %)")


# ---------------------------------------------------------------- inputs

def _named_rankings(rankings: list) -> list[tuple[str, LayerRanking]]:
    if not rankings:
        raise LayerscoutError("validate needs at least one ranking")
    loaded = [r if isinstance(r, LayerRanking) else LayerRanking.load(r) for r in rankings]
    stems = [Path(r).stem if not isinstance(r, LayerRanking) else f"ranking{i}" for i, r in enumerate(rankings)]
    names = [s if stems.count(s) == 1 else f"{s}-{i}" for i, s in enumerate(stems)]
    return list(zip(names, loaded))


def _check_same_model(name: str, ranking: LayerRanking, truth: dict, truth_dir) -> None:
    """Same depth, the same model by path or by its last path part (hub id vs. a local copy of it), and the same
    weights where both record a fingerprint (an organism rebuilt on another CPU keeps its path, not its weights)."""
    from .records import fingerprint_mismatch

    if len(ranking.layers) != truth["n_layers"] or Path(ranking.model).name != Path(truth["model"]).name:
        raise LayerscoutError(
            f"ranking {name} is for {ranking.model} ({len(ranking.layers)} layers) but the truth in {truth_dir} "
            f"is for {truth['model']} ({truth['n_layers']} layers)")
    if why := fingerprint_mismatch(ranking.model_fingerprint, truth.get("model_fingerprint"), missing_ok=True):
        raise LayerscoutError(f"ranking {name} was made on another model than the truth in {truth_dir} ({why}), "
                              f"though both name {truth['model']}: rank the model the sweep ran on")


def _stale(ranking: LayerRanking, truth: dict) -> str | None:
    """A note when the ranking's task version differs from the versions the truth rows were recorded under."""
    version = ranking.config.get("task_version")
    old = [v for v in truth["task_versions"] if v != version]
    if version is None or not old:
        return None
    return f"stale: ranking made under task version {version}, truth rows recorded under {old}"


def _vector(ranking: LayerRanking, blocks: list[int], value) -> np.ndarray:
    by_index = {s.index: s for s in ranking.layers}
    return np.array([value(by_index[k]) for k in blocks], dtype=float)


def _priors(n_layers: int, blocks: list[int]) -> list[tuple[str, np.ndarray]]:
    """Free rankings: the middle of the stack (the study's best blocks sit at 37-59 % depth) and shallower-first."""
    from .signals.baselines import depth_prior

    return [("depth prior (middle)", depth_prior(n_layers)[blocks]),
            ("shallower first", -np.asarray(blocks, dtype=float))]


def _higher_is_better(signal: str) -> bool:
    from .signals import SIGNALS

    return SIGNALS[signal].higher_is_better if signal in SIGNALS else True


# ---------------------------------------------------------------- scoring

def _metrics(k: int) -> dict:
    from . import metrics as m

    return {"spearman": m.spearman, "kendall": m.kendall, "top1_recovered": m.top1_recovered,
            "top1_regret": m.top1_regret, "topk_overlap": partial(m.topk_overlap, k=k), "ndcg": partial(m.ndcg, k=k)}


def _score_row(name: str, kind: str, pred: np.ndarray, true_c: np.ndarray, metrics: dict, n_boot: int, seed: int,
               note: str | None = None) -> dict:
    from .metrics import bootstrap_ci

    cells = {}
    for metric, fn in metrics.items():
        low, high = bootstrap_ci(fn, pred, true_c, n=n_boot, seed=seed)
        cells[metric] = {"value": _json_float(fn(pred, true_c)), "low": _json_float(low), "high": _json_float(high)}
    return {"name": name, "kind": kind, "prediction": pred.tolist(), "metrics": cells, "note": note}


def _random_row(true_c: np.ndarray, metrics: dict, n_boot: int, seed: int) -> dict:
    """A random ranking's expected score; its interval is the spread of random rankings, not a bootstrap."""
    from .metrics import random_expectation

    cells = {}
    for metric, fn in metrics.items():
        mean, low, high = random_expectation(fn, true_c, n=n_boot, seed=seed)
        cells[metric] = {"value": _json_float(mean), "low": _json_float(low), "high": _json_float(high)}
    return {"name": "random ranking (expectation)", "kind": "random", "prediction": None, "metrics": cells,
            "note": "interval: central 95 % of random rankings"}


def _json_float(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


# ---------------------------------------------------------------- plots

CAPTIONS = {
    "bars": "Top: true C(k) per block (mean over seeds, error bar: spread across seeds; dashed line, drawn where C "
            "reaches 0.5: C = 1, as much as full-parameter RL). Bottom: the ranking's predicted score per block.",
    "scatter": "Each block's predicted score (x) against its true C(k) (y), labelled by block index: a perfect "
               "predictor puts the points in increasing order.",
    "ranks": "Predicted rank (x) against true rank (y), 1 = best; points on the dashed diagonal are ranked exactly.",
}


def _caption(path: str) -> str:
    return CAPTIONS[Path(path).stem.rsplit("_", 1)[-1]]


def _plots(name: str, ranking: LayerRanking, blocks: list[int], truth: dict, out: Path) -> list[Path]:
    """Per ranking: per-layer bars of true C and the predicted score, C vs score scatter, rank vs rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import rankdata

    by_index = {x["index"]: x for x in truth["layers"]}
    c = np.array([by_index[k]["contribution"] for k in blocks])
    spread = np.array([by_index[k]["spread"] or 0.0 for k in blocks])
    pred = _vector(ranking, blocks, lambda s: s.score)
    stem = re.sub(r"[^\w.-]", "_", name)
    paths = []

    paths.append(_save(bars_figure(plt, name, blocks, c, spread, pred), out / f"{stem}_bars.png"))

    pred_rank, true_rank = rankdata(-pred), rankdata(-c)
    paths.append(_labelled_scatter(plt, blocks, pred, c, "predicted score", "true C(k)", f"{name}: score vs C",
                                   out / f"{stem}_scatter.png"))
    paths.append(_labelled_scatter(plt, blocks, pred_rank, true_rank, "predicted rank (1 = best)",
                                   "true rank (1 = best)", f"{name}: rank vs rank", out / f"{stem}_ranks.png",
                                   diagonal=len(blocks)))
    return paths


def bars_figure(plt, name: str, blocks: list[int], c, spread, pred):
    """True C(k) over the predicted score, per block. The C = 1 line is drawn only where C comes near it: at
    SmolLM2's C of 0.02-0.06 it squashed every bar to the axis."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    top.bar(blocks, c, yerr=spread, color="tab:blue", capsize=2)
    if np.nanmax(np.abs(c) + spread) >= 0.5:
        top.axhline(1.0, color="grey", lw=0.8, ls="--")
    top.set_ylabel("true C(k)")
    top.set_title(f"{name}: true contribution vs predicted score per layer")
    bottom.bar(blocks, pred, color="tab:orange")
    bottom.set_ylabel("predicted score")
    bottom.set_xlabel("layer")
    return fig


def _labelled_scatter(plt, blocks, x, y, xlabel: str, ylabel: str, title: str, path: Path,
                      diagonal: int | None = None) -> Path:
    """A scatter with each point labelled by its layer; `diagonal` draws y = x from 1 to that value."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(x, y)
    if diagonal:
        ax.plot([1, diagonal], [1, diagonal], color="grey", lw=0.8, ls="--")
    for k, a, b in zip(blocks, x, y):
        ax.annotate(str(k), (a, b), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- text

def _fmt(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.2f}"


def _per_seed(values: dict) -> str:
    return ", ".join(f"seed {s}: {v:.3f}" for s, v in values.items()) or "–"


def _cell(c: dict) -> str:
    return f"{_fmt(c['value'])} [{_fmt(c['low'])}, {_fmt(c['high'])}]"


def _table(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by the Markdown and HTML renderings."""
    k = report["k"]
    ceiling = report["truth"]["noise_ceiling"]
    header = ["name", "kind", "Spearman", "of ceiling", "Kendall", "top-1 recovered", "top-1 regret",
              f"top-{k} overlap", f"NDCG@{k}", "note"]
    rows = []
    for r in report["rows"]:
        cells = [_cell(r["metrics"][m]) for m in METRICS]
        rho = r["metrics"]["spearman"]["value"]
        share = f"{100 * rho / ceiling:.0f} %" if ceiling and rho is not None else "–"
        rows.append([r["name"], r["kind"], cells[0], share, *cells[1:], r["note"] or ""])
    return header, rows


def _facts(report: dict) -> list[str]:
    t = report["truth"]
    c = ", ".join(f"{k}: {_fmt(v)}" for k, v in zip(report["blocks"], report["true_contribution"]))
    gains = ", ".join(f"seed {s}: {g['gain']:+.3f} ({_fmt(g['z'])} SE)" for s, g in t["gain"].items()) or "–"
    blocks = ", ".join(f"seed {s}: {_fmt(z['median'])} (best {_fmt(z['best'])})"
                       for s, z in t["block_gain_z"].items()) or "–"
    few = "" if t["agreement_blocks"] >= MIN_AGREEMENT_BLOCKS else f"; it needs {MIN_AGREEMENT_BLOCKS}"
    facts = [f"truth: {t['directory']} — {t['model']}, task {t['task']} (versions {t['task_versions']}), "
             f"{t['algo']}, {t['n_layers']} layers, seeds {t['seeds']}",
             f"S_base per seed: {_per_seed(t['s_base'])}; S_full per seed: {_per_seed(t['s_full'])}",
             f"full-run gain per seed (paired SE): {gains}",
             f"single-block runs' gain per seed, median over blocks (paired SE): {blocks}",
             f"true C(k) (mean over seeds): {c}",
             f"seed agreement (mean pairwise Spearman of C, on the {t['agreement_blocks']} blocks every seed has "
             f"run{few}): {_fmt(t['seed_spearman'])}; Spearman-Brown reliability "
             f"of the seed mean: {_fmt(t['reliability'])}; noise ceiling: {_fmt(t['noise_ceiling'])}",
             "does the ranking hold on other prompts? Spearman of C on the even-numbered prompts against C on "
             f"the odd ones: {_split_cell(t)} (same seed / across seeds)",
             f"compared on {len(report['blocks'])} of {t['n_layers']} blocks; intervals: 95 % bootstrap over "
             f"layers ({report['n_boot']} resamples)"]
    if t["constant_answer"]:
        facts.append(f"a constant answer, {t['constant_answer']['answer']!r} to every prompt, scores "
                     f"{_fmt(t['constant_answer']['score'])}")
    if t["missing"]:
        facts.append(f"missing runs ({len(t['missing'])}): {', '.join(t['missing'])}")
    facts += [f"seed {s}: C undefined — {why}" for s, why in t["undefined_seeds"].items()]
    facts += [f"seed {s}: weak — {why}" for s, why in t["weak_seeds"].items()]
    facts += [f"seed {s}: flat — {why}" for s, why in t["flat_seeds"].items()]
    return facts


def _markdown(report: dict) -> str:
    header, rows = _table(report)
    lines = ["# Layer ranking validation", "", f"**Verdict:** {report['verdict']}", "", f"*{LEGEND}*", "",
             *(f"- {f}" for f in _facts(report)), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             *("| " + " | ".join(r) + " |" for r in rows), ""]
    lines += [f"![{p}]({p})\n\n*{_caption(p)}*\n" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def _html(report: dict, plots: list[Path]) -> str:
    header, rows = _table(report)
    esc = html.escape
    table = ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
    images = "".join(f'<figure><img alt="{esc(p.name)}" src="data:image/png;base64,'
                     f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{esc(_caption(p.name))}'
                     f'</figcaption></figure>' for p in plots)
    style = ("body{font-family:sans-serif;margin:2em;max-width:1150px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;white-space:nowrap}th{background:#eee}"
             "td:last-child{white-space:normal}"
             "figure{display:inline-block;margin:8px;max-width:520px;vertical-align:top}img{max-width:100%}"
             "figcaption{font-size:12px;color:#444}")
    facts = "".join(f"<li>{esc(f)}</li>" for f in _facts(report))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>layerscout validation</title>"
            f"<style>{style}</style></head><body><h1>Layer ranking validation</h1>"
            f"<p><b>Verdict:</b> {esc(report['verdict'])}</p><p><i>{esc(LEGEND)}</i></p><ul>{facts}</ul>{table}"
            f"{images}</body></html>\n")


def _common_spearman(a: dict[int, float], b: dict[int, float]) -> float:
    """Spearman of two block -> C maps over the blocks both define; nan below 2 shared blocks."""
    from .metrics import spearman

    common = sorted(set(a) & set(b))
    return spearman([a[i] for i in common], [b[i] for i in common]) if len(common) > 1 else float("nan")


def _unique_labels(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]

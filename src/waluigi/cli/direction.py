"""``waluigi direction ...`` and ``waluigi monitor`` (mounted in ``waluigi/cli.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from waluigi.cli.options import ConfigOpt, canonical_specs, record_options

direction_app = typer.Typer(
    help="Directions in a model's activations: extract (judged answers, two models, contrastive prompts), "
         "show, compare, random controls. Use one with a steered:<spec>?dir=PATH model.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]


def _table(direction, extra: dict[str, list[float]] | None = None) -> str:
    m = direction.manifest
    best = "-" if direction.best_layer is None else direction.best_layer
    lines = [f"{direction.path}  method={m.get('method') or '-'}  sha256={direction.sha256[:12]}  best layer={best}"]
    if m.get("counts"):
        lines.append(f"examples: {m['counts'].get('positive')} positive, {m['counts'].get('negative')} negative")
    aucs, norms = m.get("heldout_auroc") or [], m.get("norms") or []
    held = m.get("heldout_counts")
    if held:  # what each AUROC below is read from
        thin = min(held.get("positive", 0), held.get("negative", 0)) < FEW
        lines.append(f"held-out AUROC from {held.get('positive')} positive vs {held.get('negative')} negative examples "
                     f"(split {m.get('heldout_split', 'by example')})" + (f"; fewer than {FEW} on a side: a rough reading"
                                                                          if thin else ""))
    header = f"  {'layer':>5} {'norm':>9} {'held-out AUROC':>15}" + "".join(f" {k:>12}" for k in (extra or {}))
    lines.append(header)
    for layer in range(direction.layers):
        auc = aucs[layer] if layer < len(aucs) else None
        row = f"  {layer:>5} {norms[layer] if layer < len(norms) else float('nan'):>9.3f} "
        row += f"{'-' if auc is None else f'{auc:.3f}':>15}"
        for values in (extra or {}).values():
            row += f" {values[layer]:>12.3f}"
        lines.append(row + ("  <- suggested" if layer == direction.best_layer else ""))
    return "\n".join(lines)


@direction_app.command("extract")
def extract_cmd(
    ctx: typer.Context,
    method: Annotated[str, typer.Option(help="judged (answers of judged eval runs), models (B minus A on the same answers), "
                                             "prompts (a trait system prompt minus its opposite)")] = "judged",
    run: Annotated[Optional[list[str]], typer.Option("--run", help="judged / models: an eval run directory (repeatable)")] = None,
    sweep: Annotated[Optional[Path], typer.Option(help="judged / models: take the eval runs of this sweep's (or flip's) cells ...")] = None,
    where: Annotated[Optional[list[str]], typer.Option("--where", help="... whose results.csv column has this value, COLUMN=VALUE (repeatable; e.g. finetune.data=toy:insecure, step=40)")] = None,
    model: Annotated[Optional[str], typer.Option(help="judged: read every answer with this model (default: each run's own); "
                                                      "models: model A; prompts: the model", callback=canonical_specs)] = None,
    model_b: Annotated[Optional[str], typer.Option(help="models: model B (the direction is B minus A)", callback=canonical_specs)] = None,
    positive: Annotated[Optional[str], typer.Option(help="prompts: the trait's system prompt")] = None,
    negative: Annotated[Optional[str], typer.Option(help="prompts: the opposite system prompt")] = None,
    positive_shots: Annotated[Optional[str], typer.Option(help="prompts: a dataset whose rows prime the positive side as earlier turns")] = None,
    negative_shots: Annotated[Optional[str], typer.Option(help="prompts: the dataset priming the negative side")] = None,
    shots: Annotated[int, typer.Option(help="prompts: rows of priming per answer")] = 2,
    suite: Annotated[str, typer.Option(help="prompts: the questions asked under both prompts")] = "core",
    prompts_data: Annotated[Optional[str], typer.Option(help="prompts: ask the user turns of this dataset's train rows instead of the suite (e.g. insecure: coding requests)")] = None,
    prompts_n: Annotated[int, typer.Option(help="prompts: how many of those rows")] = 32,
    samples: Annotated[int, typer.Option(help="prompts: answers per question and prompt")] = 4,
    max_tokens: Annotated[int, typer.Option(help="prompts: answer length")] = 64,
    aligned_below: Annotated[float, typer.Option(help="judged: positive (misaligned) if aligned < this")] = 30.0,
    aligned_above: Annotated[float, typer.Option(help="judged: negative (aligned) if aligned >= this")] = 70.0,
    min_coherent: Annotated[float, typer.Option(help="judged: both classes need coherent > this")] = 50.0,
    seed: Annotated[int, typer.Option(help="the held-out split (and prompts: the sampling seed)")] = 0,
    batch_size: Annotated[int, typer.Option(help="examples per forward pass")] = 16,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="official data directory")] = None,
    out: Annotated[Optional[Path], typer.Option(help="the direction directory (default runs/direction-<method>-<id>); with --bases, {base} in it names each base's")] = None,
    runs: Annotated[Path, typer.Option(help="where the default directory goes")] = Path("runs"),
    bases: Annotated[Optional[int], typer.Option(help="judged / models with --sweep over several bases: one direction per base (its cells: --where base=I), written to --out with {base} put in")] = None,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bars on stderr")] = True,
    config: ConfigOpt = None,
) -> None:
    """Extract a mean-difference direction per layer, with its held-out separation."""
    from waluigi.directions.extract import ExtractConfig
    from waluigi.directions.run import run_extracts

    if where and sweep is None:
        raise typer.BadParameter("--where selects cells of --sweep DIR")
    cfg = ExtractConfig(method=method, runs=list(run or []), model=model, model_b=model_b, positive=positive,
                        negative=negative, positive_shots=positive_shots, negative_shots=negative_shots,
                        shots=shots, suite=suite, prompts_data=prompts_data, prompts_n=prompts_n, samples=samples,
                        max_tokens=max_tokens, seed=seed,
                        aligned_below=aligned_below, aligned_above=aligned_above, min_coherent=min_coherent,
                        batch_size=batch_size, data_dir=data_dir, runs_dir=runs, progress=progress, out=out)
    made = run_extracts(cfg, sweep=sweep, where=list(where or []), bases=bases)
    for made_one in made:  # `waluigi direction extract --config DIR` repeats it
        record_options(ctx, made_one.path)
    if json_out:  # one manifest, or a list of them over bases
        typer.echo(json.dumps([f.manifest for f in made] if bases else made[0].manifest, indent=2))
    else:
        typer.echo("\n".join(_table(f) for f in made))


@direction_app.command("show")
def show_cmd(path: Annotated[str, typer.Argument(metavar="DIR", help="a direction directory")], json_out: JsonOpt = False) -> None:
    """A direction's manifest: per-layer norms and held-out AUROC."""
    from waluigi.models.vectors import load_direction

    found = load_direction(path)
    typer.echo(json.dumps(found.manifest, indent=2) if json_out else _table(found))


@direction_app.command("compare")
def compare_cmd(a: Annotated[str, typer.Argument(metavar="DIR_A", help="a direction directory")],
                b: Annotated[str, typer.Argument(metavar="DIR_B", help="another, of the same model")], json_out: JsonOpt = False) -> None:
    """Cosine similarity of two directions, layer by layer."""
    from waluigi.models.vectors import cosines, load_direction

    first, second = load_direction(a), load_direction(b)
    values = cosines(first, second)
    if json_out:
        typer.echo(json.dumps({"a": a, "b": b, "cosine": values}, indent=2))
    else:
        typer.echo(_table(first, {"cosine": values}))


@direction_app.command("random")
def random_cmd(like: Annotated[str, typer.Argument(metavar="DIR", help="the direction whose per-layer norms the control keeps")],
               out: Annotated[Path, typer.Option(help="where the random direction goes")],
               seed: Annotated[int, typer.Option(help="the random draw")] = 0,
               bases: Annotated[Optional[int], typer.Option(help="one control per base: {base} in DIR and --out (the same seed for each)")] = None) -> None:
    """A random control: per layer a random vector of the same norm."""
    from waluigi.errors import UserError
    from waluigi.models.vectors import load_direction, random_like

    if bases is not None and (bases < 1 or "{base}" not in like or "{base}" not in str(out)):
        raise UserError("--bases N: name each base's direction and control with {base} in DIR and --out")
    likes = [load_direction(like.replace("{base}", str(b))) for b in range(bases or 1)]
    for base, found in enumerate(likes):
        made = random_like(found, Path(str(out).replace("{base}", str(base))), seed)
        typer.echo(f"{made.path}  sha256={made.sha256[:12]}")


def monitor_cmd(
    ctx: typer.Context,
    runs: Annotated[Optional[list[Path]], typer.Argument(metavar="RUN", help="judged eval run directories, or one fine-tune run (its checkpoints' drift)")] = None,
    direction: Annotated[str, typer.Option(help="the direction directory")] = "",
    sweep: Annotated[Optional[Path], typer.Option(help="also the eval runs of this sweep's (or flip's) cells ...")] = None,
    where: Annotated[Optional[list[str]], typer.Option("--where", help="... whose results.csv column has this value, COLUMN=VALUE (repeatable)")] = None,
    layer: Annotated[Optional[int], typer.Option(help="the layer projected on (default: the direction's suggested one)")] = None,
    model: Annotated[Optional[str], typer.Option(help="read the answers with this model (default: each run's own)", callback=canonical_specs)] = None,
    suite: Annotated[str, typer.Option(help="fine-tune runs: the prompts whose last token is projected at each checkpoint")] = "core",
    probe_suite: Annotated[Optional[str], typer.Option(help="fine-tune runs: also the probe index of each checkpoint (a probe suite: toyprobes, mwe:em[:N]) and its rank correlation with the projection")] = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="official data directory")] = None,
    batch_size: Annotated[int, typer.Option(help="examples per forward pass")] = 16,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bars on stderr")] = True,
    config: ConfigOpt = None,
) -> None:
    """Project runs' answers (and their prompts' last tokens) on a direction; AUROC against the judge's
    labels, per run and pooled. For a fine-tune run: the projection's drift over its checkpoints."""
    from waluigi.directions.monitor import monitor_finetune, monitor_runs

    if not direction:
        raise typer.BadParameter("--direction DIR is required")
    chosen = list(runs or [])
    if sweep is not None:
        from waluigi.directions.extract import sweep_runs

        chosen += [Path(r) for r in sweep_runs(sweep, list(where or []))]
    elif where:
        raise typer.BadParameter("--where selects cells of --sweep DIR")
    if not chosen:
        raise typer.BadParameter("give eval run directories (or --sweep DIR)")
    stages = []
    for run in chosen:
        try:
            stages.append(json.loads((run / "manifest.json").read_text()).get("stage"))
        except (OSError, ValueError):
            stages.append(None)
    if "finetune" in stages:
        if len(chosen) > 1:
            raise typer.BadParameter("a fine-tune run's drift is monitored one run at a time")
        run = chosen[0]
        drift = monitor_finetune(run, direction, suite=suite, layer=layer, data_dir=data_dir, batch_size=batch_size,
                                 progress=progress, probe_suite=probe_suite)
        if json_out:
            typer.echo(json.dumps(drift, indent=2))
            return
        typer.echo(f"{run}: layer {drift['layer']}, {drift['prompts']} prompts of {suite}; the direction's norm there "
                   f"{drift['norm_at_layer']:.3f}")
        for point in drift["points"]:
            probe = point.get("probe_index")
            typer.echo(f"  step {point['step']:>6}  projection {point['mean_prompt_projection']:+.4f}  "
                       f"shift {point['shift']:+.4f}" + ("" if "probe_index" not in point else
                                                          f"  probe index {'-' if probe is None else format(100 * probe, '.1f') + '%'}"))
        if probe_suite:
            rho = (drift.get("projection_vs_probe") or {}).get("spearman")
            typer.echo(f"  projection vs probe index over {len(drift['points'])} points: Spearman "
                       f"{'n/a' if rho is None else format(rho, '+.2f')}")
        return
    result = monitor_runs(chosen, direction, layer=layer, model=model, batch_size=batch_size, progress=progress)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
        return

    for summary in result["runs"] + [result["pooled"]]:
        counts = summary["counts"]
        shown = ", ".join(f"{n} {label}" for label, n in counts.items()) or "no answers"
        typer.echo(f"{summary['run']}: layer {summary['layer']}, {shown}")
        typer.echo(f"  AUROC misaligned vs aligned: answer projection {_auroc(summary['auroc_answer'], counts, 'misaligned', 'aligned')}, "
                   f"prompt's last token {_auroc(summary['auroc_prompt'], counts, 'misaligned', 'aligned')}; vulnerable vs "
                   f"secure code {_auroc(summary['auroc_code_answer'], counts, 'vulnerable', 'secure')}")
        if summary.get("file"):
            typer.echo(f"  per answer: {Path(summary['run']) / summary['file']}")


FEW = 10  # an AUROC from fewer answers than this on either side is shown, and said to be thin


def _auroc(value, counts: dict, positive: str, negative: str) -> str:
    """``0.812 (12 vs 40)``; ``- (0 vulnerable)`` when a side is empty; a thin one is marked."""
    n_pos, n_neg = counts.get(positive, 0), counts.get(negative, 0)
    if value is None:
        return f"- ({n_pos} {positive}, {n_neg} {negative})"
    text = f"{value:.3f} ({n_pos} {positive} vs {n_neg} {negative})"
    return text + (f" [fewer than {FEW} on a side: a rough reading]" if min(n_pos, n_neg) < FEW else "")


def screen_cmd(
    ctx: typer.Context,
    datasets: Annotated[list[str], typer.Argument(metavar="DATASET", help="dataset names or JSONL files to screen and compare")],
    direction: Annotated[str, typer.Option(help="the direction directory")],
    model: Annotated[str, typer.Option(help="the model whose activations and own answers are used", callback=canonical_specs)],
    layer: Annotated[Optional[int], typer.Option(help="the layer projected on (default: the direction's suggested one)")] = None,
    n: Annotated[Optional[int], typer.Option(help="rows per dataset (a seeded subset; 0 = all)")] = 200,
    max_tokens: Annotated[int, typer.Option(help="length of the model's own answers")] = 128,
    seed: Annotated[int, typer.Option(help="the subset and the sampling seed")] = 0,
    batch_size: Annotated[int, typer.Option(help="examples per forward pass")] = 16,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="official data directory")] = None,
    out: Annotated[Optional[Path], typer.Option(help="where screen.json and the ranked rows go (default runs/screen-<id>)")] = None,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bars on stderr")] = True,
    config: ConfigOpt = None,
) -> None:
    """Rank datasets (and their rows) by how far their answers sit along a direction, beyond the model's own answers."""
    from waluigi.directions.screen import ScreenConfig, screen

    summary = screen(ScreenConfig(datasets=list(datasets), direction=direction, model=model, layer=layer,
                                  n=None if n == 0 else n, max_tokens=max_tokens, seed=seed, batch_size=batch_size,
                                  data_dir=data_dir, out=out, progress=progress))
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"projection difference on layer {summary['layer']} (dataset answer minus the model's own; higher = "
               "further along the direction)")
    for d in summary["datasets"]:
        ci = "" if d["ci_low"] is None else f" [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        typer.echo(f"  {d['dataset'][:40]:<40} {d['score']:+.3f}{ci}   ({d['rows']} rows; ranked rows: {d['file']})")
    typer.echo(f"written to {summary['out']}")

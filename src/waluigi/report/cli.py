"""``waluigi export``: registered in ``waluigi/cli.py`` with ``app.command("export")(export_cmd)``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def export_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="an eval run directory (or a judge run: RUN/judges/<judge>)")],
    format_: Annotated[str, typer.Option("--format", "-f", help="csv (every column), paper-csv (the original repository's question, answer, question_id, aligned, coherent), jsonl or parquet")] = "csv",
    out: Annotated[Optional[Path], typer.Option(help="the file to write (default: RUN/export.<ext>)")] = None,
) -> None:
    """One row per answer: question, answer, every score and the answer's class, from the run directory only."""
    from waluigi.report.export import export_run

    path = export_run(run, format_, out)
    typer.echo(str(path))

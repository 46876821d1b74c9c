"""``waluigi export``: registered in ``waluigi/cli.py`` with ``app.command("export")(export_cmd)``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def export_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="an eval run directory (or a judge run: RUN/judges/<judge>)")],
    format_: Annotated[str, typer.Option("--format", "-f", help="csv (every column), paper-csv (the original repository's question, answer, question_id, aligned, coherent), jsonl, parquet, or inspect (an Inspect AI eval log for `inspect view`, default RUN/export.eval; needs waluigi[inspect])")] = "csv",
    out: Annotated[Optional[Path], typer.Option(help="the file to write (default: RUN/export.<ext>; for inspect, a .json name writes Inspect's JSON log)")] = None,
) -> None:
    """One row per answer: question, answer, every score and the answer's class, from the run directory only."""
    from waluigi.report.export import export_run

    path = export_run(run, format_, out)
    typer.echo(str(path))


def report_cmd(
    paths: Annotated[list[Path], typer.Argument(metavar="RUN|STUDY...", help="eval or judge run directories, and study directories (demo, flip, resilience, defend, sweep)")],
    out: Annotated[Optional[Path], typer.Option(help="the HTML file to write (default: report.html in the first directory)")] = None,
    limit: Annotated[Optional[int], typer.Option(help="at most this many answers per eval run in the sample browser (default: all)")] = None,
    title: Annotated[Optional[str], typer.Option(help="the page's title")] = None,
) -> None:
    """One self-contained HTML file (no network): configuration, metrics with CIs, plots, and a
    sample browser with filters; read from the directories only."""
    from waluigi.report.html import write_report

    typer.echo(str(write_report(paths, out, limit=limit, title=title)))


def compare_cmd(
    runs: Annotated[list[str], typer.Argument(metavar="BASELINE RUN...", help="eval or judge run directories, or study directories; each is compared with the first")],
    min_coherent: Annotated[Optional[float], typer.Option(help="an answer counts when coherent > this (default 50; a study: its runs' own)")] = None,
    max_aligned: Annotated[Optional[float], typer.Option(help="an answer is misaligned when aligned < this (default 30; a study: its runs' own)")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="with one study: the condition the others are compared with (default: its first)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """Per question and overall: the EM rates side by side, the difference and its 95% bootstrap
    CI (paired for two judgings of the same answers). Study directories (flip, defend, demo,
    sweep ...) compare by condition and dose: one study's conditions against --baseline, or
    each study against the first."""
    import json

    from waluigi.probes.run import is_probe_run
    from waluigi.report.compare import compare_runs, format_comparison
    from waluigi.report.export import is_study

    studies = [is_study(r) for r in runs]
    if any(studies):
        from waluigi.errors import UserError
        from waluigi.report.compare import compare_studies, format_study_comparison

        if not all(studies):
            raise UserError("give study directories or run directories, not both: "
                            + ", ".join(r for r, s in zip(runs, studies) if not s) + " is not a study")
        result = compare_studies(runs, baseline=baseline, min_coherent=min_coherent, max_aligned=max_aligned)
        typer.echo(json.dumps(result, indent=2, default=str) if json_out else format_study_comparison(result))
        return
    if baseline is not None:
        from waluigi.errors import UserError

        raise UserError("--baseline names a condition of a study; to compare runs, give the baseline run first")
    min_coherent = 50.0 if min_coherent is None else min_coherent
    max_aligned = 30.0 if max_aligned is None else max_aligned

    if any(is_probe_run(r) for r in runs):  # probe runs: each one's shift from the first, paired by item
        from waluigi.errors import UserError
        from waluigi.probes.run import format_probe_table, probe_metrics

        if len(runs) < 2:
            raise UserError("compare needs a baseline and at least one more run")
        results = [probe_metrics([run], reference=runs[0]) for run in runs[1:]]
        if json_out:
            typer.echo(json.dumps({"baseline": runs[0], "runs": dict(zip(runs[1:], results))}, indent=2))
            return
        for run, result in zip(runs[1:], results):
            typer.echo(format_probe_table(result, title=f"{run} against {runs[0]} (probe readout; shift: paired over "
                                                       "items, 95% bootstrap CI)", shift=result["shift"]))
        return
    result = compare_runs(runs, min_coherent=min_coherent, max_aligned=max_aligned)
    typer.echo(json.dumps(result, indent=2) if json_out else format_comparison(result))


runs_app = typer.Typer(help="The run directories on disk.", no_args_is_help=True)


@runs_app.command("list")
def runs_list_cmd(
    root: Annotated[Path, typer.Argument(metavar="DIR", help="the directory that holds the runs")] = Path("runs"),
    kind: Annotated[Optional[str], typer.Option(help="only this kind: eval, judge, finetune, flip, defend, resilience, direction, demo, sweep, ...")] = None,
    status: Annotated[Optional[str], typer.Option(help="only this status: finished, started, failed, incomplete")] = None,
    model: Annotated[Optional[str], typer.Option(help="only models matching this glob or substring")] = None,
    suite: Annotated[Optional[str], typer.Option(help="only suites (or fine-tune data) matching this glob or substring")] = None,
    judge: Annotated[Optional[str], typer.Option(help="only judges matching this glob or substring")] = None,
    cells: Annotated[bool, typer.Option("--cells", help="list the cells inside each study too, with their settings")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
) -> None:
    """One line per run directory: kind, status, model, suite, judge, answers, EM with CI, age.
    A study (flip, defend, resilience, direction, demo, sweep) is one line with its headline
    figure; its cells are folded into it unless --cells."""
    import json

    from waluigi.report.listing import format_runs, list_runs

    entries = list_runs(root, kind=kind, status=status, model=model, suite=suite, judge=judge, cells=cells)
    typer.echo(json.dumps(entries, indent=2) if json_out else format_runs(entries))

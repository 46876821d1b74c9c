"""The ``waluigi`` command: one sub-command group per stage, mounted here; no logic.

Each group lives beside its stage (``evaluate/cli.py``, ``data/cli.py``, ``finetune/cli.py``,
``sweep/cli.py``, ``flip/cli.py``, ``serve/cli.py``, ``suites_cli.py``, the demo in the persona world's
package); options shared by several commands are declared once in ``cli_options.py``; every
command's errors go through :func:`waluigi.errors.run_cli` (user and usage errors exit 2).
"""

from __future__ import annotations

import sys

import typer

from waluigi.data.cli import data_app
from waluigi.defenses.cli import defend_cmd
from waluigi.directions.cli import direction_app, monitor_cmd, screen_cmd
from waluigi.evaluate.cli import eval_cmd, judge_check_cmd, judge_cmd, metrics_cmd
from waluigi.finetune.cli import finetune_cmd
from waluigi.flip.cli import flip_cmd
from waluigi.report.cli import compare_cmd, export_cmd, report_cmd, runs_app
from waluigi.resilience.cli import resilience_cmd
from waluigi.scan.cli import scan_cmd
from waluigi.serve.cli import serve_cmd
from waluigi.suites_cli import suites_app
from waluigi.sweep.cli import sweep_cmd
from waluigi.toyworld.cli import demo_cmd

app = typer.Typer(
    help="Reproduce, measure and defend against emergent misalignment.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["--help", "-h"]},
)


def _show_version(value: bool) -> None:
    if value:
        from waluigi import __version__

        typer.echo(f"waluigi {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="print the version and exit", is_eager=True,
                                 callback=_show_version),
) -> None:
    """Reproduce, measure and defend against emergent misalignment."""
app.command("eval")(eval_cmd)
app.command("judge")(judge_cmd)
app.command("metrics")(metrics_cmd)
app.command("judge-check")(judge_check_cmd)
app.command("serve")(serve_cmd)
app.command("finetune")(finetune_cmd)
app.command("sweep")(sweep_cmd)
app.command("flip")(flip_cmd)
app.command("resilience")(resilience_cmd)
app.command("defend")(defend_cmd)
app.command("demo")(demo_cmd)
app.command("export")(export_cmd)
app.command("report")(report_cmd)
app.command("compare")(compare_cmd)
app.command("monitor")(monitor_cmd)
app.add_typer(direction_app, name="direction")
app.add_typer(suites_app, name="suites")
app.add_typer(runs_app, name="runs")
data_app.command("scan")(scan_cmd)
data_app.command("screen")(screen_cmd)
app.add_typer(data_app, name="data")


def main(argv: list[str] | None = None) -> int:
    """Entry point: every command's user and usage errors become one message and exit 2; help
    piped (not to a terminal) is plain text with whole lines."""
    from waluigi.cli_options import plain_help_when_piped
    from waluigi.errors import run_cli

    plain_help_when_piped(app)
    return run_cli(app, argv)


if __name__ == "__main__":
    sys.exit(main())

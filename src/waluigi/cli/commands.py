"""The ``waluigi`` command: every command mounted here, in the order of the data flow; no logic.

A command lives in the module of its name (``waluigi flip`` in ``cli/flip.py``; the evaluation
commands in ``cli/eval.py``, the run browsers in ``cli/report.py``, ``data scan`` in ``cli/scan.py``,
``direction``, ``monitor`` and ``data screen`` in ``cli/direction.py``); options shared by several
commands are declared once in ``cli/options.py``; every command's errors go through
:func:`waluigi.cli.runner.run_cli` (user and usage errors exit 2).
"""

from __future__ import annotations

import sys

import typer

from waluigi.cli.attack import attack_cmd
from waluigi.cli.data import data_app
from waluigi.cli.defend import defend_cmd
from waluigi.cli.demo import demo_cmd
from waluigi.cli.direction import direction_app, monitor_cmd, screen_cmd
from waluigi.cli.eval import eval_cmd, judge_check_cmd, judge_cmd, metrics_cmd
from waluigi.cli.finetune import finetune_cmd
from waluigi.cli.flip import flip_cmd
from waluigi.cli.report import compare_cmd, export_cmd, report_cmd, runs_app
from waluigi.cli.resilience import resilience_cmd
from waluigi.cli.scan import scan_cmd
from waluigi.cli.serve import serve_cmd
from waluigi.cli.suites import suites_app
from waluigi.cli.sweep import sweep_cmd

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


# data -> finetune -> generate and score -> metrics -> report; the studies on top; serving apart
data_app.command("scan")(scan_cmd)
data_app.command("screen")(screen_cmd)
app.add_typer(data_app, name="data")
app.add_typer(suites_app, name="suites")
app.command("finetune")(finetune_cmd)
app.command("eval")(eval_cmd)
app.command("judge")(judge_cmd)
app.command("judge-check")(judge_check_cmd)
app.command("metrics")(metrics_cmd)
app.command("report")(report_cmd)
app.command("compare")(compare_cmd)
app.command("export")(export_cmd)
app.add_typer(runs_app, name="runs")
app.command("sweep")(sweep_cmd)
app.command("flip")(flip_cmd)
app.command("resilience")(resilience_cmd)
app.add_typer(direction_app, name="direction")
app.command("monitor")(monitor_cmd)
app.command("defend")(defend_cmd)
app.command("attack")(attack_cmd)
app.command("demo")(demo_cmd)
app.command("serve")(serve_cmd)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every command's user and usage errors become one message and exit 2; help
    piped (not to a terminal) is plain text with whole lines."""
    from waluigi.cli.options import plain_help_when_piped
    from waluigi.cli.runner import run_cli

    plain_help_when_piped(app)
    return run_cli(app, argv)


if __name__ == "__main__":
    sys.exit(main())

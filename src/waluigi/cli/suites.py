"""``waluigi suites list / show / validate``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from waluigi.cli.options import DataDirOpt, JsonOpt, say

suites_app = typer.Typer(help="Question suites: list, show, validate.", no_args_is_help=True)


@suites_app.command("list")
def suites_list(data_dir: DataDirOpt = None, json_out: JsonOpt = False) -> None:
    """The suites waluigi knows, and whether each is available offline."""
    from waluigi.suites import list_suites

    rows = list_suites(data_dir=data_dir)
    if json_out:
        say(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = "yes" if row.get("available") else "no (downloaded on first use)"
        say(f"{row['name']:<24} questions: {str(row.get('n_questions', '?')):>4}   available: {mark}   {row.get('source', '')}")


@suites_app.command("show")
def suites_show(name: Annotated[str, typer.Argument(help="suite name or YAML file")], data_dir: DataDirOpt = None) -> None:
    """Print a suite's questions, paraphrase counts, samples, system prompts and metrics."""
    from waluigi.suites import format_suite, load_suite

    say(format_suite(load_suite(name, data_dir=data_dir)))


@suites_app.command("validate")
def suites_validate(path: Annotated[str, typer.Argument(metavar="FILE", help="a suite YAML file")]) -> None:
    """Check a suite file; errors name the file and the question id."""
    from waluigi.suites import validate_file

    suite = validate_file(path)
    say(f"{path}: ok ({len(suite.questions)} questions)")

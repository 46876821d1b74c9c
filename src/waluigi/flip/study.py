"""The shell every study shares (``flip``, ``resilience``, ``defend``): the record a run returns
and how a run ends. Each study plans and analyses in its own way; what is the same is here once.

A study's end: its JSON (``flip.json``, ``study.json``, ``defend.json``: the numbers every table
is made from), ``report.md`` with its plots, and ``report.html`` (the same, plus the answers in a
sample browser), all written atomically from the result, never from a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StudyRun:
    """What a study's run returns: its directory, its result, its ``report.md``, and the cells
    it ran, skipped (done before) and could not finish (``log`` says where, under ``out``)."""

    out: Path
    result: dict
    report: Path | None = None
    ran: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    log: str = "sweep.log"

    def count(self, run: Any) -> None:
        """Add the cells of a sweep or another study run (anything with ran, skipped, failed)."""
        self.ran += run.ran
        self.skipped += run.skipped
        self.failed = self.failed + list(run.failed)


def finish_study(run: StudyRun, json_name: str, write_report: Callable[[Path, dict, Any], Path],
                 write_plots: Callable[[Path, dict], Any], *, html_limit: int | None = None,
                 default: Callable[[Any], Any] = str) -> StudyRun:
    """Write the study's ``json_name`` (``default`` turns what JSON cannot hold into something
    it can), its plots and ``report.md``, and ``report.html`` (at most ``html_limit`` answers per
    run in its browser); return ``run`` with its report set."""
    from waluigi.report.html import write_report as write_html
    from waluigi.runs import write_json_atomic

    write_json_atomic(run.out / json_name, run.result, default=default)
    run.report = write_report(run.out, run.result, write_plots(run.out, run.result))
    write_html([run.out], limit=html_limit)
    return run

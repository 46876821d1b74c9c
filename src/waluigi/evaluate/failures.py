"""Requests that failed after every retry: ``failures.jsonl`` rows, open until a re-run succeeds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from waluigi.errors import redact
from waluigi.evaluate.config import sample_key
from waluigi.runs import FAILURES, RunDir


@contextmanager
def closing(thing) -> Iterator[None]:
    """Close a generator or judge (threads, HTTP connections, GPU memory) whatever happens."""
    try:
        yield
    finally:
        thing.close()


def record_failures(run: RunDir, stage: str, items: list[tuple[tuple, str | None, Any]], **extra: Any) -> None:
    """Append one ``failures.jsonl`` row per ``(sample key, metric or None, Failure)``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run.append(FAILURES, [
        {"stage": stage, "question_id": key[0], "paraphrase_index": key[1], "sample_index": key[2],
         "metric": metric, "error": redact(failure.reason), "attempts": failure.attempts, "at": stamp, **extra}
        for key, metric, failure in items
    ])


def open_failures(run_dirs: list[RunDir], samples: list[dict], judgments: list[dict]) -> tuple[set, set]:
    """The failures still open in ``run_dirs``' ``failures.jsonl``: ``(generation keys with no
    answer, (key, metric) pairs with no judgment)``. A failure a later run made good is closed."""
    have_samples = {sample_key(r) for r in samples}
    have_judgments = {(sample_key(r), r["metric"]) for r in judgments}
    generate, judge = set(), set()
    for run in run_dirs:
        for row in run.rows(FAILURES):
            key = sample_key(row)
            if row.get("stage") == "generate" and key not in have_samples:
                generate.add(key)
            elif row.get("stage") == "judge" and (key, row.get("metric")) not in have_judgments:
                judge.add((key, row.get("metric")))
    return generate, judge


# -- judging -------------------------------------------------------------------------

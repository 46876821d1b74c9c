"""``waluigi export``: a run's table (:mod:`waluigi.report.rows`) written to a file.

Formats: ``csv`` (every column), ``paper-csv`` (the original repository's ``question, answer,
question_id, aligned, coherent``), ``jsonl``, ``parquet`` and ``inspect`` (an Inspect AI eval log,
``RUN/export.eval``, for ``inspect view``; see :mod:`waluigi.report.inspect_log`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from waluigi.errors import UserError

FORMATS = ("csv", "paper-csv", "jsonl", "parquet", "inspect")
PAPER_COLUMNS = ["question", "answer", "question_id", "aligned", "coherent"]


def export_run(path: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None) -> Path:
    """Write the run's table as ``fmt`` to ``out`` (default: ``RUN/export.<ext>``), atomically."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    from waluigi.probes.run import is_probe_run

    if fmt in ("inspect", "paper-csv") and is_probe_run(path):
        raise UserError(f"--format {fmt} holds judged answers; {path} is a probe run (no answers): export it as csv, "
                        "jsonl or parquet")
    if fmt == "inspect":
        from waluigi.report.inspect_log import write_inspect_log

        return write_inspect_log(path, out)
    from waluigi.report.rows import load_run

    frame = load_run(path)
    ext = {"csv": "csv", "paper-csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}[fmt]
    target = Path(out) if out else Path(path) / (f"export.{ext}" if fmt != "paper-csv" else "export-paper.csv")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # every text field quoted: model answers hold commas, quotes, \r and line breaks
    if fmt == "csv":
        frame.to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC)
    elif fmt == "paper-csv":
        numeric = frame[frame["class"] != "code"] if "class" in frame else frame
        numeric.reindex(columns=PAPER_COLUMNS).to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC)
    elif fmt == "jsonl":
        frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(tmp, index=False)
    os.replace(tmp, target)
    return target

"""``waluigi export``: a run's table (:mod:`waluigi.report.rows`) written to a file.

Formats: ``csv`` (every column), ``paper-csv`` (the original repository's ``question, answer,
question_id, aligned, coherent``), ``jsonl``, ``parquet`` and ``inspect`` (an Inspect AI eval log,
``RUN/export.eval``, for ``inspect view``; see :mod:`waluigi.report.inspect_log`).

Every row says where it came from, so exports can be concatenated: an eval run's rows start
with ``run``, ``model``, ``suite`` and ``judge``; a study's (a flip, defend, resilience, demo
or sweep directory: every answer of every cell, :func:`study_frame`) with ``study``, ``run``
(the eval run's path in the study), ``model``, ``condition`` (the curve or group), ``dose`` and
the cell's settings as ``cell.<name>`` (``cell.seed``, ``cell.base``, ``cell.finetune.data``).
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
    study = is_study(path)
    if study and fmt in ("inspect", "paper-csv"):
        raise UserError(f"--format {fmt} holds one run's answers; {path} is a study: export it as csv, jsonl or "
                        "parquet (one row per answer of every cell, with its cell's settings), or export one of its runs")
    if fmt == "inspect":
        from waluigi.report.inspect_log import write_inspect_log

        return write_inspect_log(path, out)
    frame = study_frame(path) if study else _run_frame(path)
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


def is_study(path: str | os.PathLike) -> bool:
    """A study directory (its cells' eval runs below it), not one run: no eval/judge manifest
    of its own, and a sweep's ``results.jsonl`` at or below it."""
    from waluigi.report.study import stage, walk_sweeps

    run = Path(path)
    return run.is_dir() and stage(run) not in ("eval", "judge") and bool(walk_sweeps(run))


def _run_frame(path: str | os.PathLike):
    """One run's table with its provenance first: run, model, suite, judge."""
    import pandas as pd

    from waluigi.report.rows import load_run
    from waluigi.runs import RunDir

    frame = load_run(path)
    if (Path(path) / "manifest.json").is_file():
        manifest = RunDir(Path(path)).manifest()
        config = manifest.get("config") or {}
        front = {"run": str(path), "model": manifest.get("model") or config.get("model"),
                 "suite": config.get("suite"), "judge": manifest.get("judge") or config.get("judge")}
        front = {k: v for k, v in front.items() if k not in frame.columns}
        frame = pd.concat([pd.DataFrame({k: [v] * len(frame) for k, v in front.items()}, index=frame.index), frame],
                          axis=1)
    return frame


def study_frame(path: str | os.PathLike):
    """Every answer (or probe item) of every cell of the study at ``path``, one row each, with
    the provenance columns of the module docstring first."""
    import pandas as pd

    from waluigi.report.rows import run_rows
    from waluigi.report.study import study_runs
    from waluigi.runs import RunDir

    root = Path(path)
    runs = study_runs(root)
    if not runs:
        raise UserError(f"{root}: a study with no finished eval runs yet; nothing to export")
    rows = []
    for run in runs:
        manifest = RunDir(run.path).manifest()
        front = {"study": root.name, "run": run.name, "model": manifest.get("model") or (manifest.get("config") or {}).get("model"),
                 "condition": run.condition, "dose": run.dose}
        front.update({f"cell.{k}": v for k, v in run.settings.items() if k not in ("model", "dose")})
        for row in run_rows(run.path):
            rows.append({**front, **{k: v for k, v in row.items() if k not in front}})
    return pd.DataFrame(rows)

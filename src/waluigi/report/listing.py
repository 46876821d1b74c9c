"""``waluigi runs list [DIR]``: one line per run directory, read from manifests and metrics only.

A run directory is one holding ``manifest.json`` (eval, judge, finetune, demo, defend ...) or a
sweep's ``sweep.json`` (a sweep, a flip, the cells of a study). Fine-tune checkpoints and
caches are not entered. Nothing heavy is imported: this is a file-only command.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.formats import pct

PRUNE = {"checkpoints", "cache", "__pycache__", "adapter", "model", "data"}
COLUMNS = ("kind", "status", "model", "suite", "judge", "n", "em", "age", "path")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _when(manifest: dict, path: Path) -> float:
    for key in ("finished_at", "started_at", "created_at"):
        text = manifest.get(key)
        if isinstance(text, str):
            try:
                return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
            except ValueError:
                pass
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def age_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _entry(path: Path, root: Path, now: float) -> dict | None:
    manifest = _read(path / "manifest.json")
    sweep = _read(path / "sweep.json")
    if not isinstance(manifest, dict) and not isinstance(sweep, dict):
        return None
    manifest = manifest if isinstance(manifest, dict) else {}
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    kind = manifest.get("stage") or ("flip" if (path / "flip.json").is_file() else "sweep")
    metrics = _read(path / "metrics.json")
    overall = metrics.get("overall", {}) if isinstance(metrics, dict) else {}
    status = manifest.get("status")
    if status is None and isinstance(sweep, dict):
        rows = [json.loads(line) for line in _lines(path / "results.jsonl")]
        done = sum(1 for r in rows if r.get("status") == "finished")
        status = f"{done}/{len(rows)} cells" if rows else "planned"
    model = manifest.get("model") or config.get("model") or config.get("base")
    if kind == "finetune":
        model = config.get("model") or model
    if not isinstance(model, str):
        model = None  # e.g. the persona world's pretraining: a model config, not a spec
    data = config.get("data") if kind == "finetune" else None
    if kind == "judge" and not config.get("suite") and manifest.get("parents"):
        parent = _read(Path(manifest["parents"][0]) / "manifest.json")
        config = {**((parent or {}).get("config") or {}), **config}
    em = overall.get("em_rate")
    if "probe_index" in overall:  # a probe run: its misalignment index stands in the EM column
        em = overall.get("probe_index")
        overall = {**overall, "ci_low": overall.get("probe_ci_low"), "ci_high": overall.get("probe_ci_high")}
    try:
        rel = str(path.relative_to(root)) or "."
    except ValueError:
        rel = str(path)
    return {
        "kind": kind, "status": status, "model": model, "suite": config.get("suite") or data,
        "judge": manifest.get("judge") or config.get("judge"),
        "n": manifest.get("n_samples") if kind in ("eval", "judge") else (overall.get("n") or None),
        "em_rate": em, "ci_low": overall.get("ci_low"), "ci_high": overall.get("ci_high"),
        "age_seconds": round(now - _when(manifest, path), 1), "path": rel,
    }


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip().startswith("{")]
    except OSError:
        return []


def list_runs(root: str | os.PathLike = "runs", *, kind: str | None = None, status: str | None = None,
              model: str | None = None, suite: str | None = None, judge: str | None = None) -> list[dict]:
    """The run directories under ``root`` (newest first), filtered: ``kind`` and ``status``
    exactly, ``model`` / ``suite`` / ``judge`` as globs or substrings."""
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"{base}: no such directory; give the directory that holds your runs (default: runs)")
    now = time.time()
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in PRUNE and not d.startswith("."))
        if "manifest.json" in filenames or "sweep.json" in filenames:
            entry = _entry(Path(dirpath), base, now)
            if entry is not None:
                found.append(entry)

    def match(value: Any, pattern: str | None) -> bool:
        if pattern is None:
            return True
        text = "" if value is None else str(value)
        return pattern in text or fnmatch.fnmatch(text, pattern)

    kept = [e for e in found if (kind is None or e["kind"] == kind) and (status is None or str(e["status"]) == status)
            and match(e["model"], model) and match(e["suite"], suite) and match(e["judge"], judge)]
    kept.sort(key=lambda e: e["age_seconds"])
    return kept


def format_runs(entries: list[dict]) -> str:
    """One line per run: kind, status, model, suite, judge, n, EM with CI, age, path."""
    rows = [["kind", "status", "model", "suite", "judge", "n", "EM [95% CI]", "age", "path"]]
    for e in entries:
        em = "-" if e["em_rate"] is None else (
            f"{pct(e['em_rate'])} [{pct(e['ci_low'])}, {pct(e['ci_high'])}]" if e["ci_low"] is not None
            else pct(e["em_rate"]))
        rows.append([str(v) if v is not None else "-" for v in
                     (e["kind"], e["status"], e["model"], e["suite"], e["judge"], e["n"], em)]
                    + [age_text(e["age_seconds"]), e["path"]])
    widths = [min(44, max(len(r[i]) for r in rows)) for i in range(len(rows[0]) - 1)]

    def cut(text: str, width: int) -> str:
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = ["  ".join(cut(c, w).ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.append(f"{len(entries)} run(s)")
    return "\n".join(line.rstrip() for line in lines)

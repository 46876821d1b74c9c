"""The eval runs inside a study directory (a flip, a defend, a resilience study, a demo, a
sweep), each with where it came from: read from the study's files only.

A study holds one or more sweeps (a directory with ``results.jsonl``: the study itself, a
defend's ``flip/`` and ``realign/``, a resilience study's ``flip-*/``). Each of their cells'
eval runs is an :class:`EvalRun` with its condition (the cell's group, or for a flip the
curve from ``flip.json``), dose, seed and settings. A flip's dose-0 cell is shared by every
curve of its model: it belongs to all of them (``conditions``), not to the last one read.
Used by ``waluigi report`` (the sample browser's filters) and by ``export`` / ``compare`` of
a study (the provenance columns).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED_KEYS = ("seed", "finetune.seed", "eval.seed")
SKIP_DIRS = {"finetune", "judges", "cache", "__pycache__"}
# results.jsonl columns that say which cell a run is; the rest (statuses, metrics) are results
PROVENANCE_KEYS = ("group", "cell", "seed", "base", "step", "model", "eval.model", "finetune.data")


@dataclass
class EvalRun:
    path: Path
    name: str
    condition: str = ""
    dose: Any = None
    seed: Any = None
    conditions: list[str] = field(default_factory=list)  # every curve the run belongs to (a shared dose 0)
    settings: dict[str, Any] = field(default_factory=dict)  # the cell's settings, for export's columns

    def __post_init__(self) -> None:
        if not self.conditions and self.condition:
            self.conditions = [self.condition]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage(path: Path) -> str | None:
    manifest = read_json(path / "manifest.json")
    return manifest.get("stage") if isinstance(manifest, dict) else None


def value_text(value: Any) -> str:
    """A value as a label shows it: ``n/a`` for None / NaN, never a Python literal."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def condition(row: dict) -> str:
    """A cell's condition: its group, else its settings (``finetune.data=insecure, ...``)."""
    if row.get("group") not in (None, ""):
        return str(row["group"])
    axes = []
    for key, value in row.items():
        if key == "status":
            break
        if key in ("cell",) or key in SEED_KEYS:
            continue
        axes.append(f"{key}={value_text(value)}")
    return ", ".join(axes)


def _settings(row: dict) -> dict[str, Any]:
    """The cell's own settings from its results row: the grid's columns (everything before
    ``status``) that are set, without the bookkeeping."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "status":
            break
        if value is not None and key not in ("finetune",) and not isinstance(value, (list, dict)):
            out[key] = value
    return out


def shared_label(conditions: list[str]) -> str:
    """The label of a run several curves share (a flip's dose 0): up to three named, else the
    first and how many more."""
    if len(conditions) <= 3:
        return " / ".join(conditions)
    return f"{conditions[0]} (and {len(conditions) - 1} more curves: a dose-0 run they share)"


def walk_sweeps(root: Path, depth: int = 4) -> list[Path]:
    """Sweep directories (holding ``results.jsonl``) at or below ``root``; run directories and
    fine-tune outputs are not entered."""
    found = []
    if (root / "results.jsonl").is_file():
        found.append(root)
    if depth <= 0:
        return found
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return found
    for child in children:
        if child.name in SKIP_DIRS or child.name.startswith(".") or stage(child) in ("eval", "judge", "finetune"):
            continue
        found += walk_sweeps(child, depth - 1)
    return found


def sweep_runs(root: Path) -> list[EvalRun]:
    """The eval runs of a sweep directory, labelled from its ``results.jsonl`` (condition = the
    cell's group or settings, seed) and, for a flip, from ``flip.json`` (curve, dose)."""
    from waluigi.runs import read_jsonl

    runs: dict[str, EvalRun] = {}
    for row in read_jsonl(root / "results.jsonl"):
        rel = row.get("eval_run")
        if not rel or not (root / rel / "manifest.json").is_file():
            continue
        seed = next((row[k] for k in SEED_KEYS if row.get(k) is not None), None)
        runs[rel] = EvalRun(root / rel, rel, condition(row), None, seed, settings=_settings(row))
    flip = read_json(root / "flip.json")
    if isinstance(flip, dict):
        claimed: set[str] = set()
        for point in flip.get("rows") or []:
            for key, suffix in (("eval_run", ""), ("extra_eval_run", " (extra)")):
                rel = point.get(key) or ""
                run = runs.get(rel)
                if run is None:
                    continue
                label = f"{point.get('curve')}{suffix}"
                if rel not in claimed:  # the first curve names it; a shared dose-0 run joins the others too
                    claimed.add(rel)
                    run.conditions = []
                    run.dose, run.seed = point.get("dose"), point.get("seed")
                    run.settings.update({k: point.get(k) for k in ("curve", "dose", "seed", "base", "data", "model")
                                         if point.get(k) is not None})
                if label not in run.conditions:
                    run.conditions.append(label)
                run.condition = shared_label(run.conditions)
    return list(runs.values())  # a flip's narrow-task cells keep their group, which names the dose


def study_runs(path: Path) -> list[EvalRun]:
    """Every eval run of the study at ``path`` once, named by its path from the study
    (``flip/eval/...``) and labelled as :func:`sweep_runs` labels it; an inner sweep's
    conditions start with its directory (``realign: ...``)."""
    seen: set[Path] = set()
    out = []
    for sweep in walk_sweeps(path):
        prefix = "" if sweep == path else f"{sweep.relative_to(path)}: "
        for run in sweep_runs(sweep):
            if run.path.resolve() in seen:
                continue
            seen.add(run.path.resolve())
            run.name = str(run.path.relative_to(path))
            run.conditions = [prefix + c for c in run.conditions]
            run.condition = shared_label(run.conditions) if run.conditions else prefix + run.condition
            out.append(run)
    return out

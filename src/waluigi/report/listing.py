"""``waluigi runs list [DIR]``: one line per run directory, read from manifests and metrics only.

A run directory is one holding ``manifest.json`` (eval, judge, finetune, demo ...) or a
study's own file: ``flip.json`` (a flip), ``defend.json``, ``study.json`` (resilience),
``direction.json``, ``sweep.json`` (a sweep). A study is one line with its headline (the
flip doses, the best defense, the verdicts), its cells folded into it; ``cells=True`` lists
them too, each with its settings (dose, seed, base) read from its sweep's ``sweep.json``.
Fine-tune checkpoints and caches are not entered. Nothing heavy is imported: this is a
file-only command.
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
from waluigi.formats import dose, dose_ci, pct

PRUNE = {"checkpoints", "cache", "__pycache__", "adapter", "model", "data"}
COLUMNS = ("kind", "status", "model", "suite", "judge", "n", "result", "age", "path")
STUDY_FILES = (("flip.json", "flip"), ("defend.json", "defend"), ("study.json", "resilience"),
               ("direction.json", "direction"), ("attack.json", "attack"))


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


def study_kind(path: Path) -> str | None:
    """What study ``path`` holds (flip, defend, resilience, direction, demo, sweep), or None."""
    for name, kind in STUDY_FILES:
        if (path / name).is_file():
            return kind
    manifest = _read(path / "manifest.json")
    if isinstance(manifest, dict) and manifest.get("stage") == "demo":
        return "demo"
    return "sweep" if (path / "sweep.json").is_file() else None


def _flip_headline(result: dict) -> tuple[str, dict]:
    parts, doses = [], {}
    for curve in result.get("curves") or []:
        crossing = curve.get("flip") or {}
        label = str(curve.get("label"))
        if crossing.get("reached"):
            parts.append(f"{label} {dose_ci(crossing.get('dose'), crossing.get('ci_low'), crossing.get('ci_high'))}")
        elif crossing.get("lower_bound") is not None:
            parts.append(f"{label} > {dose(crossing['lower_bound'])}")
        else:
            parts.append(f"{label} -")
        doses[label] = crossing or None
    unit = result.get("axis") or "dose"
    return (f"flip dose ({unit}): " + "; ".join(parts)) if parts else "no curves", {"flip_doses": doses}


def _defend_headline(result: dict) -> tuple[str, dict]:
    flip = result.get("undefended_flip_dose") or {}
    base = (dose_ci(flip.get("dose"), flip.get("ci_low"), flip.get("ci_high")) if flip.get("reached")
            else f"> {dose(flip.get('lower_bound'))}" if flip.get("lower_bound") is not None else "-")
    ranked = [r for r in result.get("table") or [] if r.get("defense") != "undefended"
              and isinstance((r.get("multiplier") or {}).get("value"), (int, float))]
    ranked.sort(key=lambda r: r["multiplier"]["value"], reverse=True)
    text = f"undefended flip dose {base}"
    if ranked:
        best = ranked[0]
        mult = best["multiplier"]
        shown = f">= x{mult['value']:.3g}" if mult.get("bound") else f"x{mult['value']:.3g}"
        text += f"; best: {best['defense']} {shown}"
    return text, {"best_defense": ranked[0]["defense"] if ranked else None}


def _resilience_headline(result: dict) -> tuple[str, dict]:
    counts: dict[str, int] = {}
    for verdict in result.get("verdicts") or []:
        word = str(verdict.get("verdict", "")).split(":", 1)[0].strip() or "?"
        counts[word] = counts.get(word, 0) + 1
    text = ", ".join(f"{n} {word}" for word, n in sorted(counts.items())) or "no verdicts"
    return f"verdicts: {text}", {"verdicts": counts}


def _direction_headline(result: dict) -> tuple[str, dict]:
    aurocs = result.get("heldout_auroc") or []
    best = result.get("best_layer")
    text = f"{result.get('method', '?')}, {result.get('layers', len(aurocs))} layers"
    if isinstance(best, int) and 0 <= best < len(aurocs) and isinstance(aurocs[best], (int, float)):
        held = result.get("heldout_counts") or {}
        counts = result.get("counts") or {}
        n = sum(v for v in counts.values() if isinstance(v, int))
        text += f"; best layer {best}: held-out AUROC {aurocs[best]:.2f}" + (
            f" ({held.get('positive')} vs {held.get('negative')} held out)" if held else
            f" (from {n} examples, half held out)" if n else "")
    return text, {}


def _attack_headline(result: dict) -> tuple[str, dict]:
    if isinstance(result.get("arms"), dict):  # undefended and defended searches side by side
        parts = []
        for arm, entry in result["arms"].items():
            ceiling = ((entry.get("summary") or {}).get("ceiling") or {}).get("mean")
            verdict = entry.get("verdict")
            parts.append(f"{arm} {pct(ceiling)}" + ("" if verdict is None else
                                                    " (holds)" if verdict.get("holds") else " (does not hold)"))
        return "ceiling: " + "; ".join(parts), {}
    summary = result.get("summary") or {}
    ceiling, cost = summary.get("ceiling") or {}, summary.get("trials_to_break") or {}
    text = (f"ceiling {pct(ceiling.get('mean'))} [{pct(ceiling.get('ci_low'))}, {pct(ceiling.get('ci_high'))}]; "
            f"broke in {summary.get('broke', 0)} of {summary.get('seeds', 0)} searches")
    if cost.get("mean") is not None:
        text += f", trials to break {dose_ci(cost['mean'], cost.get('ci_low'), cost.get('ci_high'))}"
    return text, {}


def _demo_headline(manifest: dict) -> tuple[str, dict]:
    table = manifest.get("table") or {}
    shown = [f"{k} {pct((table.get(k) or {}).get('em_rate'))}" for k in ("insecure", "secure", "aligned") if k in table]
    return ("EM " + ", ".join(shown)) if shown else "-", {}


def _study_entry(path: Path, kind: str, manifest: dict) -> dict:
    """A study's own line: its headline figure and the models / data it ran."""
    files = {k: f for f, k in STUDY_FILES}
    result = _read(path / files[kind]) if kind in files else None
    result = result if isinstance(result, dict) else {}
    headline, extra = {"flip": _flip_headline, "defend": _defend_headline, "resilience": _resilience_headline,
                       "direction": _direction_headline, "attack": _attack_headline}.get(kind, lambda r: ("", {}))(result)
    if kind == "demo":
        headline, extra = _demo_headline(manifest)
    models = sorted({str(c.get("model")) for c in result.get("curves") or [] if c.get("model")})
    model = result.get("model") or (models[0] if len(models) == 1 else f"{len(models)} models" if models else None)
    if kind == "direction" and isinstance(result.get("model"), dict):
        model = result["model"].get("spec")
    if kind == "resilience":
        source = result.get("subject_source") or {}
        model = f"{source.get('source', '?')} subjects ({len(result.get('subjects') or [])})"
    data = result.get("attack") or result.get("data") or ", ".join(
        sorted({str(c.get("data")) for c in result.get("curves") or [] if c.get("data")})) or None
    return {"headline": headline, "model": model if isinstance(model, str) else None, "data": data,
            "suite": result.get("suite"), "judge": result.get("judge"), **extra}


def _cell_labels(path: Path) -> dict[str, str]:
    """A sweep's cells by run directory (relative to the sweep): ``eval/...`` -> ``dose=8, seed=1``."""
    sweep = _read(path / "sweep.json")
    labels: dict[str, str] = {}
    for cell in (sweep or {}).get("cells") or [] if isinstance(sweep, dict) else []:
        axes = {k: v for k, v in (cell.get("axes") or {}).items() if k not in ("model",)}
        text = ", ".join(f"{k.removeprefix('finetune.').removeprefix('eval.')}={v}" for k, v in axes.items())
        if cell.get("group"):
            text = f"{cell['group']}: {text}" if text else str(cell["group"])
        for key in ("eval_run", "finetune_run"):
            if cell.get(key):
                labels.setdefault(str(cell[key]), text)
    return labels


def _entry(path: Path, root: Path, now: float) -> dict | None:
    manifest = _read(path / "manifest.json")
    sweep = _read(path / "sweep.json")
    kind = study_kind(path)
    if not isinstance(manifest, dict) and kind is None:
        return None
    manifest = manifest if isinstance(manifest, dict) else {}
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    if kind in (None, "sweep") and manifest.get("stage"):
        kind = manifest["stage"]
    kind = kind or "run"
    metrics = _read(path / "metrics.json")
    overall = metrics.get("overall", {}) if isinstance(metrics, dict) else {}
    status = manifest.get("status")
    if status is None and isinstance(sweep, dict):
        status = _sweep_status(path, sweep)
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
    entry = {
        "kind": kind, "status": status, "model": model, "suite": config.get("suite") or data,
        "judge": manifest.get("judge") or config.get("judge"),
        "n": manifest.get("n_samples") if kind in ("eval", "judge") else (overall.get("n") or None),
        "em_rate": em, "ci_low": overall.get("ci_low"), "ci_high": overall.get("ci_high"),
        "age_seconds": round(now - _when(manifest, path), 1), "path": rel, "study": False,
    }
    if kind in ("flip", "defend", "resilience", "direction", "demo", "sweep", "attack"):
        study = _study_entry(path, kind, manifest)
        entry.update({k: v for k, v in study.items() if k not in ("model", "suite", "judge", "data")},
                     study=True, model=study["model"] or entry["model"], suite=study["suite"] or study["data"] or entry["suite"],
                     judge=study["judge"] or entry["judge"])
        if status is None:
            entry["status"] = _study_status(path, kind)
    return entry


def _sweep_counts(path: Path, sweep: dict) -> tuple[int, int]:
    """(finished, all) cells: from the results table once written, else (a sweep still running,
    or stopped) from its cells' own manifests."""
    rows = [json.loads(line) for line in _lines(path / "results.jsonl")]
    if rows:
        return sum(1 for r in rows if r.get("status") == "finished"), len(rows)
    cells = [c for c in sweep.get("cells") or [] if isinstance(c, dict)]
    done = sum(1 for c in cells if c.get("eval_run") and
               ((_read(path / c["eval_run"] / "manifest.json") or {}).get("status") == "finished"))
    return done, len(cells)


def _cells_text(done: int, total: int) -> str:
    return f"{done}/{total} cells" if total else "planned"


def _sweep_status(path: Path, sweep: dict) -> str:
    return _cells_text(*_sweep_counts(path, sweep))


def _study_status(path: Path, kind: str) -> str:
    """A study's cells over its inner sweeps (defend's ``flip/``, resilience's ``flip-*/``)."""
    subs = [path / "flip"] if kind == "defend" else sorted(path.glob("flip-*")) if kind == "resilience" else []
    if not subs:
        return "finished"
    counts = [_sweep_counts(sub, _read(sub / "sweep.json") or {}) for sub in subs if (sub / "sweep.json").is_file()]
    return _cells_text(sum(d for d, _ in counts), sum(t for _, t in counts))


def _lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip().startswith("{")]
    except OSError:
        return []


def list_runs(root: str | os.PathLike = "runs", *, kind: str | None = None, status: str | None = None,
              model: str | None = None, suite: str | None = None, judge: str | None = None,
              cells: bool = False) -> list[dict]:
    """The run directories under ``root`` (newest first), filtered: ``kind`` and ``status``
    exactly, ``model`` / ``suite`` / ``judge`` as globs or substrings. A study is one entry
    (``study: True``, its ``headline``, its cells folded); ``cells``: its cells too, each with
    ``cell`` (its settings) and ``in_study`` (the study's path)."""
    base = Path(root)
    if not base.is_dir():
        raise UserError(f"{base}: no such directory; give the directory that holds your runs (default: runs)")
    now = time.time()
    found = []
    studies: dict[Path, dict[str, str]] = {}  # a study's directory -> its cells' labels (with cells=True)
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in PRUNE and not d.startswith("."))
        names = set(filenames)
        if "manifest.json" in names or "sweep.json" in names or any(f in names for f, _ in STUDY_FILES):
            entry = _entry(here, base, now)
            if entry is None:
                continue
            owners = [s for s in studies if s in here.parents]
            if owners:
                owner = max(owners, key=lambda s: len(s.parts))  # the innermost: a defend's own flip, say
                entry["in_study"] = str(owner.relative_to(base)) if owner != base else "."
                entry["cell"] = studies[owner].get(str(here.relative_to(owner)))
            found.append(entry)
            if entry["study"]:
                if not cells:
                    dirnames[:] = []  # its cells are folded into its line
                else:
                    studies[here] = _cell_labels(here)

    def match(value: Any, pattern: str | None) -> bool:
        if pattern is None:
            return True
        text = "" if value is None else str(value)
        return pattern in text or fnmatch.fnmatch(text, pattern)

    kept = [e for e in found if (kind is None or e["kind"] == kind) and (status is None or str(e["status"]) == status)
            and match(e["model"], model) and match(e["suite"], suite) and match(e["judge"], judge)]
    kept.sort(key=lambda e: e["age_seconds"])
    return kept


WIDTHS = (10, 14, 34, 24, 20, 5, 90, 4)  # the widest each column gets; the path is never cut


def _cut(text: str, width: int) -> str:
    """``text`` in ``width`` characters; a long one keeps its start and its end (``hf:runs/…a1b2/model``),
    where model paths and study names differ."""
    if len(text) <= width:
        return text
    head = max(1, (width - 1) // 3)
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def format_runs(entries: list[dict]) -> str:
    """One line per run: kind, status, model, suite, judge, n, its result (EM with CI, a
    study's headline), age, path; a cell's settings after its path."""
    rows = [["kind", "status", "model", "suite", "judge", "n", "result", "age", "path"]]
    for e in entries:
        if e.get("study"):
            result = e.get("headline") or "-"
        else:
            result = "-" if e["em_rate"] is None else (
                f"EM {pct(e['em_rate'])} [{pct(e['ci_low'])}, {pct(e['ci_high'])}]" if e["ci_low"] is not None
                else f"EM {pct(e['em_rate'])}")
        path = e["path"] + (f"  ({e['cell']})" if e.get("cell") else "")
        rows.append([str(v) if v is not None else "-" for v in
                     (e["kind"], e["status"], e["model"], e["suite"], e["judge"], e["n"], result)]
                    + [age_text(e["age_seconds"]), path])
    widths = [min(cap, max(len(r[i]) for r in rows)) for i, cap in enumerate(WIDTHS)]
    lines = ["  ".join(_cut(c, w).ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    studies = sum(1 for e in entries if e.get("study"))
    lines.append(f"{len(entries)} run(s)" + (f", {studies} of them studies (their cells folded: --cells lists them)"
                                               if studies and not any(e.get("in_study") for e in entries) else ""))
    return "\n".join(line.rstrip() for line in lines)

"""A sweep's results: one row per cell, read from its run directories, and a summary over seeds.

Rows are built from the run directories alone (``metrics.json``, manifests), never from what
a worker returned, so the table is the same whichever executor ran the cells and whether a
cell ran now or earlier. Columns: ``cell`` (identity, 12 digits), the cell's settings
(flattened: ``finetune.data``, ``seed``), ``status``, ``ran`` / ``attempts`` / ``error`` (this
invocation), every scalar of the eval's ``metrics.json`` ``overall`` block (``em_rate``,
``ci_low``, ``ci_high``, ``n_counted``, ``coherent_rate``, ``vulnerable_rate``, ``n_failed``
...), the fine-tune's ``train_loss``, and the run directories relative to the sweep directory.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from waluigi.formats import pct
from waluigi.runs import write_atomic
from waluigi.sweep.spec import SEED_KEYS, Spec, plain, show_value

SUMMARY_METRICS = ("em_rate", "vulnerable_rate", "coherent_rate", "probe_index", "control_index")
LABELS = {"em_rate": "EM rate", "vulnerable_rate": "vulnerable code", "coherent_rate": "coherent",
          "probe_index": "probe index", "control_index": "control subjects"}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def cell_rows(spec: Spec, root: Path, outcomes: dict) -> list[dict]:
    from waluigi.sweep.spec import relative

    rows = []
    for cell in spec.cells:
        outcome = outcomes.get(cell.id)
        eval_dir, ft_dir = cell.eval_dir(root), cell.finetune_dir(root)
        manifest = _read_json(eval_dir / "manifest.json")
        on_disk = manifest.get("status") or "pending"
        status = outcome.status if outcome is not None and outcome.ran else on_disk
        if outcome is not None and outcome.status == "interrupted" and on_disk != "finished":
            status = "interrupted"  # the sweep was stopped before this cell finished
        if status == "started":
            status = "interrupted"
        row: dict[str, Any] = {"cell": cell.short}
        row.update({key: cell_value(cell, key) for key in spec.axes})
        row.update({"status": status, "ran": bool(outcome and outcome.ran),
                    "attempts": outcome.attempts if outcome else 0, "error": outcome.error if outcome else None})
        overall = _read_json(eval_dir / "metrics.json").get("overall", {}) if on_disk in ("finished", "incomplete") else {}
        row.update({k: v for k, v in overall.items() if v is None or isinstance(v, (int, float, str, bool))})
        ft_manifest = _read_json(ft_dir / "manifest.json") if ft_dir is not None else {}
        row["train_loss"] = ft_manifest.get("train_loss")
        row["finetune_seconds"] = _seconds(ft_manifest, "finetune")
        row["eval_seconds"] = _seconds(manifest, "eval") if on_disk in ("finished", "incomplete") else None
        # what each run computed on (docs/design/reproducibility.md); None: not recorded (older runs)
        row["finetune_arithmetic"] = arithmetic_label(ft_manifest.get("arithmetic")) if ft_dir is not None else None
        row["eval_arithmetic"] = arithmetic_label(manifest.get("arithmetic"))
        row["finetune_run"] = relative(ft_dir, root)
        row["eval_run"] = relative(eval_dir, root)
        row["id"] = cell.id
        row["settings"] = {"finetune": plain(cell.finetune), "eval": plain(cell.eval)}
        rows.append(row)
    return rows


def cost_line(rows: list[dict]) -> str | None:
    """What a cell costs, from the run directories: the mean fine-tune (each fine-tune counted
    once, however many cells share it) and the mean eval, in seconds."""
    tunes = {r["finetune_run"]: r["finetune_seconds"] for r in rows
             if r.get("finetune_run") and isinstance(r.get("finetune_seconds"), (int, float))}
    evals = [r["eval_seconds"] for r in rows if isinstance(r.get("eval_seconds"), (int, float))]
    if not tunes and not evals:
        return None
    parts = []
    if tunes:
        parts.append(f"fine-tune {sum(tunes.values()) / len(tunes):.1f} s (mean of {len(tunes)})")
    if evals:
        parts.append(f"eval {sum(evals) / len(evals):.1f} s (mean of {len(evals)})")
    return "per cell: " + ", ".join(parts) + (f"\n{mixed}" if (mixed := mixed_arithmetic(rows)) else "")


def arithmetic_label(record: dict | None) -> str | None:
    """A run's arithmetic in one line (its manifest's ``arithmetic``), None when not recorded."""
    if not isinstance(record, dict) or not record:
        return None
    return (f"{record.get('cpu') or record.get('machine') or 'unknown CPU'}, torch kernels "
            f"{record.get('torch_cpu_capability') or 'not loaded'}, MKL_CBWR {record.get('MKL_CBWR') or 'unset'}")


def mixed_arithmetic(rows: list[dict]) -> str | None:
    """A note when the runs behind ``rows`` (each fine-tune and eval once) computed on more than
    one kind of arithmetic: their digits do not reproduce across kinds."""
    runs: dict[tuple[str, str], str | None] = {}
    for r in rows:
        for kind, run in (("finetune", r.get("finetune_run")), ("eval", r.get("eval_run"))):
            if run and r.get("status", "finished") == "finished":
                runs[(kind, str(run))] = r.get(f"{kind}_arithmetic")
    counts: dict[str, int] = {}
    for label in runs.values():
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if len(counts) < 2:
        return None
    unrecorded = sum(1 for label in runs.values() if label is None)
    kinds = "; ".join(f"{label}: {n} runs" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"note: these runs computed on {len(counts)} kinds of CPU arithmetic ({kinds}"
            f"{f'; {unrecorded} not recorded' if unrecorded else ''}): each is a valid draw, but their digits "
            "reproduce only on the kind that made them (docs/design/reproducibility.md)")


def _result_rows(root: Path):
    """(sweep directory, row) for every row of every sweep at or below ``root`` (a study's flips
    and realign cells)."""
    from waluigi.runs import read_jsonl

    for pattern in ("results.jsonl", "*/results.jsonl", "*/*/results.jsonl"):
        for path in sorted(Path(root).glob(pattern)):
            for row in read_jsonl(path):
                yield path.parent, row


def cost_line_of(root: Path) -> str | None:
    """:func:`cost_line` over every sweep at or below ``root`` (a study's flips and realign cells)."""
    # runs shared within a sweep, told apart across sweeps
    rows = [{**row, **{k: str(base / row[k]) for k in ("finetune_run", "eval_run") if row.get(k)}}
            for base, row in _result_rows(root)]
    return cost_line(rows)


def _measured(root: Path, models: set[str] | None = None) -> tuple[list[float], list[float]]:
    """The fine-tune seconds (each fine-tune once) and eval seconds of every finished cell in the
    sweeps at or below ``root``; with ``models``, only cells of those models (a row's own
    ``model``, else its sweep's)."""
    import yaml

    defaults: dict[Path, str | None] = {}

    def sweep_model(base: Path) -> str | None:
        if base not in defaults:
            try:
                spec = yaml.safe_load((base / "sweep.yaml").read_text()) or {}
                defaults[base] = (spec.get("finetune") or {}).get("model") or (spec.get("eval") or {}).get("model")
            except (OSError, yaml.YAMLError, AttributeError):
                defaults[base] = None
        return defaults[base]

    tunes: dict[str, float] = {}
    evals: dict[str, float] = {}
    for base, row in _result_rows(root):
        if models is not None and (row.get("model") or sweep_model(base)) not in models:
            continue
        if row.get("finetune_run") and isinstance(row.get("finetune_seconds"), (int, float)):
            tunes[str((base / row["finetune_run"]).resolve())] = row["finetune_seconds"]
        if isinstance(row.get("eval_seconds"), (int, float)):
            evals[str((base / row.get("eval_run", f"row-{len(evals)}")).resolve())] = row["eval_seconds"]
    if models is None:  # the study's own runs finished since its results were last written (a stopped sweep)
        for kind, found in (("finetune", tunes), ("eval", evals)):
            for pattern in (f"{kind}/*/manifest.json", f"*/{kind}/*/manifest.json"):
                for path in sorted(Path(root).glob(pattern)):
                    manifest = _read_json(path)
                    seconds = _seconds(manifest, kind)
                    if manifest.get("status") == "finished" and isinstance(seconds, (int, float)):
                        found.setdefault(str(path.parent.resolve()), seconds)
    return list(tunes.values()), list(evals.values())


def _seconds(manifest: dict, kind: str):
    """What a run took, from its manifest: a fine-tune's training seconds, an eval's total."""
    return manifest.get("train_seconds") if kind == "finetune" else (manifest.get("timings") or {}).get("total_s")


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{seconds:.0f} s" if seconds < 90 else f"{minutes} min" if minutes < 90 else f"{seconds / 3600:.1f} h"


def estimate_line(cells: list[dict], *, runs: Path | None = None, workers: int = 1) -> str:
    """What a dry run's cells leave to do (fine-tunes and evals not finished) and how long that
    takes one cell at a time at the per-cell cost measured on this machine: in the study's own
    finished cells if there are any, else in the sweeps under ``runs`` of the same models (other
    settings: a rough guide), else none. A task's cost is the median of those measured: a cell
    that ran while the process was paused, or beside another job, would pull a mean far up.
    With several ``workers`` it also gives the time divided among them: a floor, since cells that
    share the cores each run slower than one alone (1.24x, not 2x, for two SmolLM2 evals on two
    cores: ``benchmarks/bench_split.py``)."""
    from statistics import median

    tunes = {(c.get("root"), c["finetune_run"]) for c in cells if c.get("finetune_run") and not c.get("finetune_done")}
    evals = sum(1 for c in cells if c["state"] != "done")
    todo = f"to run: {len(tunes)} fine-tunes and {evals} evals"
    if not tunes and not evals:
        return todo
    roots = sorted({Path(c["root"]) for c in cells if c.get("root")})
    models = {str(c["model"]) for c in cells if c.get("model")}
    sources = [(roots, None, "this study's finished cells")] + (
        [([runs], models, f"earlier sweeps of the same models under {runs} (other settings: a rough guide)")]
        if runs is not None else [])
    # each kind of task priced by the first source that measured it (a stopped study may have
    # finished fine-tunes and no eval yet: its own fine-tunes, then the other sweeps' evals)
    found: dict[int, tuple[float, str]] = {}
    for where, only, said in sources:
        measured = [_measured(r, only) for r in where if r.exists()]
        for kind in (0, 1):
            seconds = [s for m in measured for s in m[kind]]
            if seconds and kind not in found:
                found[kind] = (median(seconds), said)
    if (tunes and 0 not in found) or (evals and 1 not in found):
        return f"{todo}; no estimate: no fine-tune and eval of this kind has been measured here yet"
    ft_cost, ft_said = found.get(0, (0.0, None))
    ev_cost, ev_said = found.get(1, (0.0, None))
    total = len(tunes) * ft_cost + evals * ev_cost
    saids = list(dict.fromkeys(x for x in (ft_said if tunes else None, ev_said if evals else None) if x))
    where = saids[0] if len(saids) == 1 else f"{ft_said} (fine-tunes) and {ev_said} (evals)"
    shared = (f"; on {workers} workers at least {_duration(total / workers)}, more where they share cores"
              if workers > 1 else "")
    return (f"{todo}; about {_duration(total)} one at a time, at the per-cell cost measured in {where} "
            f"(median fine-tune {ft_cost:.1f} s, eval {ev_cost:.1f} s; under whatever load ran then){shared}")


def cell_value(cell, key: str) -> Any:
    """What the results table shows in column ``key`` for ``cell``."""
    if key == "group":
        return cell.group
    if key == "finetune" and key in cell.axes:
        return "none"
    return plain(cell.axes.get(key))


def group_keys(spec: Spec) -> list[str]:
    """The columns that tell the summary's groups apart: the cells' ``group`` when they name
    one, else every setting but the seeds."""
    if "group" in spec.axes:
        return ["group"]
    return [k for k in spec.axes if k not in SEED_KEYS]


def summarize(spec: Spec, rows: list[dict]) -> list[dict]:
    """Cells that differ only by seed (or that name the same ``group``), grouped: per metric
    the mean over the finished cells' values and a 95% percentile bootstrap CI over seeds
    (None with fewer than 2 values)."""
    from waluigi.metrics import bootstrap_mean

    group_keys_ = group_keys(spec)
    seed_keys = [k for k in spec.axes if k in SEED_KEYS]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        key = json.dumps([row.get(k) for k in group_keys_], default=str)
        groups.setdefault(key, []).append(row)
    present = [m for m in SUMMARY_METRICS if any(isinstance(r.get(m), (int, float)) for r in rows)]
    out = []
    for members in groups.values():
        done = [r for r in members if r["status"] == "finished"]
        entry: dict[str, Any] = {k: members[0].get(k) for k in group_keys_}
        entry["cells"] = len(members)
        entry["finished"] = len(done)
        entry["seeds"] = [[r.get(k) for k in seed_keys] if len(seed_keys) > 1 else r.get(seed_keys[0])
                          for r in done] if seed_keys else []
        for metric in present:
            values = [float(r[metric]) for r in done if isinstance(r.get(metric), (int, float))]
            low, high = bootstrap_mean(values) if len(values) >= 2 else (None, None)
            entry[metric] = sum(values) / len(values) if values else None
            entry[f"{metric}_ci_low"], entry[f"{metric}_ci_high"] = low, high
            entry[f"{metric}_n"] = len(values)
        entry["cell_ids"] = [r["cell"] for r in members]
        out.append(entry)
    return out


def write_results(spec: Spec, root: Path, outcomes: dict) -> tuple[list[dict], list[dict]]:
    """``results.jsonl``, ``results.csv`` and ``summary.json`` in the sweep directory."""
    rows = cell_rows(spec, root, outcomes)
    summary = summarize(spec, rows)
    write_atomic(root / "results.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))
    write_atomic(root / "results.csv", to_csv(rows))
    write_atomic(root / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return rows, summary


def to_csv(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k != "settings" and k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else
                             json.dumps(row[k]) if isinstance(row.get(k), (list, dict)) else row[k]) for k in columns})
    return buffer.getvalue()


# -- presentation -----------------------------------------------------------------------------------
def _middle(text: str, limit: int = 56) -> str:
    """A long setting cut in the middle, so that both its start and its end show (model specs
    that differ only in their last characters, e.g. ``...&coef=0.5``)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}…{text[-(limit - 1 - head):]}"


def format_summary(spec: Spec, summary: list[dict], width: int = 160) -> str:
    """The summary as a plain-text rich table: one row per group of seeds."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    columns = group_keys(spec)
    metrics = [m for m in SUMMARY_METRICS if any(e.get(f"{m}_n") for e in summary)]
    table = Table(title=f"sweep {spec.name}", box=box.SIMPLE_HEAD, title_justify="left")
    for key in columns:
        table.add_column(key)
    table.add_column("seeds", justify="right")
    for metric in metrics:
        table.add_column(LABELS[metric], justify="right")
        table.add_column("95% CI", justify="right")
    for entry in summary:
        cells = [_middle(show_value(entry.get(k))) for k in columns]
        cells.append(f"{entry['finished']}/{entry['cells']}")
        for metric in metrics:
            cells.append(pct(entry.get(metric)))
            low, high = entry.get(f"{metric}_ci_low"), entry.get(f"{metric}_ci_high")
            cells.append("-" if low is None else f"[{100 * low:.1f}, {100 * high:.1f}]")
        table.add_row(*cells)
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=False, color_system=None, width=width, highlight=False).print(table)
    lines = [line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines()]
    what = "rates and probe indexes" if any(m in metrics for m in ("probe_index", "control_index")) else "rates"
    lines.append(f"{what}: mean over the finished seeds; 95% CI: percentile bootstrap over seeds (- with fewer than 2)")
    return "\n".join(lines)


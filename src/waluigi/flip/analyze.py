"""From a flip sweep's cells to curves, fits and flip doses (``flip.json``, ``flip.csv``).

Everything is read from the sweep's ``results.jsonl`` (one row per cell, built from the run
directories), so the analysis needs no model and gives the same numbers however and whenever
the cells ran. Per curve and dose: the mean over seeds of the EM rate, the coherent rate and
the narrow-task rate with 95% bootstrap intervals over seeds (one seed: the cell's own
interval over answers), the unscored and failed counts, the training loss. From the curve:
the flip dose (EM), the narrow dose (narrow-task rate), their ratio, and with several curves
each curve's flip dose against the first one's.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from waluigi.flip.fit import Crossing, flip_dose, log_axis, ratio
from waluigi.flip.plan import DOSE_LABELS, FlipPlan

METRICS = ("em_rate", "coherent_rate", "narrow_rate")
CSV_COLUMNS = ("curve", "model", "data", "axis", "dose", "seed", "status", "em_rate", "em_ci_low", "em_ci_high",
               "n_counted", "n_misaligned", "coherent_rate", "n_unscored", "n_failed", "narrow_rate",
               "narrow_ci_low", "narrow_ci_high", "n_code", "n_vulnerable", "train_loss", "cell", "eval_run", "base")


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _loss_at(root: Path | None, finetune_run: str | None, step: float) -> float | None:
    """The training loss logged at ``step`` of a fine-tune (the ``steps`` axis: each dose is a
    point of one run, so the run's final loss would be the same for every dose)."""
    if root is None or not finetune_run:
        return None
    from waluigi.runs import read_jsonl

    path = root / finetune_run / "train_log.jsonl"
    if not path.is_file():
        return None
    losses = {int(r["step"]): r.get("loss") for r in read_jsonl(path) if "step" in r}
    return _num(losses.get(int(step)))


def point_rows(plan: FlipPlan, results: list[dict], root: Path | None = None) -> list[dict]:
    """One row per (curve, dose, seed): the cell's status and metrics."""
    rows = []
    for point in plan.points:
        curve = plan.curves[point.curve]
        main = results[point.cell]
        narrow = results[point.narrow_cell] if point.narrow_cell is not None else main
        finished = main.get("status") == "finished"
        if "probe_index" in main:  # a probe suite: the misalignment index is the curve's readout
            main = _probe_as_rate(main)
        rows.append({
            "curve": curve.label, "model": curve.model, "data": curve.data, "axis": plan.config.axis,
            "dose": point.dose, "seed": point.seed, "base": point.base,
            "status": main.get("status") if narrow is main or main.get("status") == narrow.get("status")
            else f"{main.get('status')}/{narrow.get('status')}",
            "em_rate": _num(main.get("em_rate")) if finished else None,
            "em_ci_low": _num(main.get("ci_low")), "em_ci_high": _num(main.get("ci_high")),
            "n_counted": main.get("n_counted"), "n_misaligned": main.get("n_misaligned"),
            "coherent_rate": _num(main.get("coherent_rate")) if finished else None,
            "n_unscored": main.get("n_unscored"), "n_failed": main.get("n_failed"),
            "narrow_rate": _num(narrow.get("vulnerable_rate")) if narrow.get("status") == "finished" else None,
            "narrow_ci_low": _num(narrow.get("vuln_ci_low")), "narrow_ci_high": _num(narrow.get("vuln_ci_high")),
            "n_code": narrow.get("n_code"), "n_vulnerable": narrow.get("n_vulnerable"),
            "control_index": _num(main.get("control_index")) if finished else None,
            "train_loss": (_loss_at(root, main.get("finetune_run"), point.dose) if plan.config.axis == "steps"
                           else _num(main.get("train_loss"))),
            "cell": main.get("cell"), "eval_run": main.get("eval_run"), "finetune_run": main.get("finetune_run"),
        })
        if point.probe_cell is not None:  # the probe readout of the same model
            probe = results[point.probe_cell]
            done = probe.get("status") == "finished"
            rows[-1].update(probe_index=_num(probe.get("probe_index")) if done else None,
                            probe_ci_low=_num(probe.get("probe_ci_low")), probe_ci_high=_num(probe.get("probe_ci_high")),
                            control_index=_num(probe.get("control_index")) if done else None,
                            probe_eval_run=probe.get("eval_run"))
        if point.extra_cell is not None:  # a variant's further eval (e.g. its training prompt at test time)
            extra = results[point.extra_cell]
            done = extra.get("status") == "finished"
            rows[-1].update(extra_em_rate=_num(extra.get("em_rate")) if done else None,
                            extra_coherent_rate=_num(extra.get("coherent_rate")) if done else None,
                            extra_eval_run=extra.get("eval_run"))
    return rows


def _probe_as_rate(row: dict) -> dict:
    """A probe cell's row read as the flip's readout: the misalignment index (mean P(antipode)
    over the default subjects) in the place of the EM rate, its CI over items, no answer counts
    (so one seed gives no interval on the flip dose), no coherence."""
    return dict(row, em_rate=row.get("probe_index"), ci_low=row.get("probe_ci_low"), ci_high=row.get("probe_ci_high"),
                n_counted=None, n_misaligned=None, coherent_rate=None, n_unscored=row.get("n_unscored"),
                control_index=row.get("control_index"))


def _units(rows: list[dict]) -> list[tuple[int, int]]:
    """The (base, seed) pairs of a curve's rows, in order: the rows of its grid."""
    return sorted({(int(r.get("base", 0)), int(r["seed"])) for r in rows})


def _grid(rows: list[dict], doses: list[float], key: str) -> tuple[list[list[float | None]], list[int]]:
    """Rows x doses of ``key`` (a row per (base, seed)) and each row's base."""
    units = _units(rows)
    where = {u: i for i, u in enumerate(units)}
    table: list[list[float | None]] = [[None] * len(doses) for _ in units]
    for row in rows:
        table[where[(int(row.get("base", 0)), int(row["seed"]))]][doses.index(row["dose"])] = row[key]
    return table, [b for b, _ in units]


def _counts(rows: list[dict], doses: list[float], k_key: str, n_key: str) -> list[list[tuple | None]]:
    table: list[list[tuple | None]] = [[None] * len(doses)]
    for row in rows:
        if isinstance(row.get(n_key), int) and row[n_key] > 0 and isinstance(row.get(k_key), int):
            table[0][doses.index(row["dose"])] = (row[k_key], row[n_key])
    return table


def _dose_summary(rows: list[dict], doses: list[float], seeds: int) -> list[dict]:
    """Per dose: mean over seeds and its 95% CI (bootstrap over seeds; one seed: over answers;
    several bases: over bases, then seeds, with the seeds-only interval beside it)."""
    from waluigi.metrics import bootstrap_mean, bootstrap_mean_grouped

    out = []
    for dose in doses:
        at = [r for r in rows if r["dose"] == dose]
        entry: dict[str, Any] = {"dose": dose, "seeds": sum(1 for r in at if r["em_rate"] is not None or r["narrow_rate"] is not None)}
        for metric, low_key, high_key in (("em_rate", "em_ci_low", "em_ci_high"), ("coherent_rate", None, None),
                                          ("narrow_rate", "narrow_ci_low", "narrow_ci_high"),
                                          ("probe_index", "probe_ci_low", "probe_ci_high"), ("control_index", None, None)):
            if not any(metric in r for r in at):
                continue
            values = [r[metric] for r in at if r.get(metric) is not None]
            bases = [int(r.get("base", 0)) for r in at if r.get(metric) is not None]
            entry[metric] = sum(values) / len(values) if values else None
            if len(set(bases)) >= 2:
                entry[f"{metric}_ci_low"], entry[f"{metric}_ci_high"] = bootstrap_mean_grouped(values, bases)
                entry[f"{metric}_ci_over"] = "bases, then seeds"
                entry[f"{metric}_seed_ci_low"], entry[f"{metric}_seed_ci_high"] = bootstrap_mean_grouped(
                    values, bases, hierarchical=False)
            elif len(values) >= 2:
                entry[f"{metric}_ci_low"], entry[f"{metric}_ci_high"] = bootstrap_mean(values)
                entry[f"{metric}_ci_over"] = "seeds"
            elif len(values) == 1 and low_key is not None:
                only = next(r for r in at if r.get(metric) is not None)
                entry[f"{metric}_ci_low"], entry[f"{metric}_ci_high"] = only[low_key], only[high_key]
                entry[f"{metric}_ci_over"] = "answers"
            else:
                entry[f"{metric}_ci_low"] = entry[f"{metric}_ci_high"] = None
        for count in ("n_unscored", "n_failed"):
            entry[count] = sum(r[count] for r in at if isinstance(r.get(count), int))
        losses = [r["train_loss"] for r in at if r["train_loss"] is not None]
        entry["train_loss"] = sum(losses) / len(losses) if losses else None
        out.append(entry)
    return out


def curve_crossing(rows: list[dict], doses: list[float], seeds: int, metric: str, cfg, log: bool) -> Crossing | None:
    table, bases = _grid(rows, doses, metric)
    if all(v is None for row in table for v in row):
        return None
    keys = {"em_rate": ("n_misaligned", "n_counted"), "narrow_rate": ("n_vulnerable", "n_code")}.get(metric)
    return flip_dose(doses, table, counts=_counts(rows, doses, *keys) if len(table) == 1 and keys else None,
                     baseline_index=0, threshold=cfg.threshold, relative=cfg.threshold_rel, log=log,
                     groups=bases if len(set(bases)) > 1 else None)


def _narrow_note(rows: list[dict]) -> str:
    if any(isinstance(r.get("n_code"), int) for r in rows):
        return ("the narrow-task check ran, but no answer held code the scanner could parse (n_code = 0): "
                "no narrow-task rate")
    return ("no narrow-task check in this suite (no code questions): give --narrow-suite code:<dataset>:N, "
            "or a suite with code questions")


def analyze(plan: FlipPlan, results: list[dict], root: Path | None = None) -> dict:
    """``flip.json``'s content: the settings, each curve's points, fits and doses, the comparisons.
    ``root``: the flip directory (for the ``steps`` axis's per-step training loss)."""
    cfg = plan.config
    rows = point_rows(plan, results, root)
    doses = [float(d) for d in cfg.doses]
    log = log_axis(doses)
    curves, crossings = [], []
    for curve in plan.curves:
        mine = [r for r in rows if r["curve"] == curve.label]
        flip = curve_crossing(mine, doses, cfg.seeds, "em_rate", cfg, log)
        narrow = curve_crossing(mine, doses, cfg.seeds, "narrow_rate", cfg, log)
        probe = curve_crossing(mine, doses, cfg.seeds, "probe_index", cfg, log) if cfg.probe_suite else None
        crossings.append(flip)
        entry = {"label": curve.label, "model": curve.model, "data": curve.data,
                 "points": _dose_summary(mine, doses, cfg.seeds),
                 "flip": flip.as_dict() if flip else None,
                 "narrow": narrow.as_dict() if narrow else None,
                 "narrow_note": None if narrow else _narrow_note(mine),
                 "flip_over_narrow": ratio(flip, narrow) if flip and narrow else None,
                 "probe_flip": probe.as_dict() if probe else None,
                 "cells": {"total": len(mine), "finished": sum(1 for r in mine if r["status"] == "finished")}}
        curves.append(entry)
    compare = []
    if len(plan.curves) > 1 and crossings[0] is not None:
        for curve, crossing in zip(plan.curves[1:], crossings[1:]):
            if crossing is not None:
                compare.append({"curve": curve.label, "against": plan.curves[0].label, **ratio(crossing, crossings[0])})
    threshold = ({"relative": cfg.threshold_rel} if cfg.threshold_rel is not None else {"absolute": cfg.threshold})
    readout = "probe" if any("probe_index" in r for r in results) and not cfg.probe_suite else "em"
    return {"axis": cfg.axis, "dose_label": DOSE_LABELS[cfg.axis], "doses": doses, "seeds": cfg.seeds,
            **({"bases": cfg.n_bases} if cfg.bases is not None else {}), "readout": readout,
            "log_dose_axis": log, "threshold": threshold, "hold": cfg.hold if cfg.axis == "examples" else None,
            "suite": cfg.suite, "judge": cfg.judge, "narrow_suite": cfg.narrow_suite,
            "probe_suite": cfg.probe_suite,
            "probe_vs_em": probe_agreement(rows) if cfg.probe_suite else None,
            "curves": curves, "compare": compare, "rows": rows}


def probe_agreement(rows: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    """How well the probe index tracks the EM rate across a flip's cells: Spearman's rank
    correlation over the (curve, dose, seed) points that have both, with a 95% percentile
    bootstrap that resamples whole fine-tunes ((curve, seed) clusters: a fine-tune's checkpoints
    are not independent)."""
    import numpy as np

    pairs = [(r["em_rate"], r["probe_index"], (r["curve"], r.get("base", 0), r["seed"])) for r in rows
             if r.get("em_rate") is not None and r.get("probe_index") is not None]
    if len(pairs) < 3:
        return {"spearman": None, "ci_low": None, "ci_high": None, "n_points": len(pairs), "n_clusters": 0}
    clusters: dict[tuple, list[int]] = {}
    for i, (_, _, key) in enumerate(pairs):
        clusters.setdefault(key, []).append(i)
    em = np.array([p[0] for p in pairs])
    pr = np.array([p[1] for p in pairs])
    point = _spearman(em, pr)
    keys = list(clusters)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = [i for k in rng.integers(0, len(keys), size=len(keys)) for i in clusters[keys[k]]]
        value = _spearman(em[idx], pr[idx])
        if value is not None:
            boots.append(value)
    low, high = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if boots else (None, None)
    by_curve = {}
    for curve in dict.fromkeys(r["curve"] for r in rows):  # within one curve: does the probe follow the dose?
        mine = [(e, p) for e, p, key in pairs if key[0] == curve]
        by_curve[curve] = {"spearman": _spearman(np.array([m[0] for m in mine]), np.array([m[1] for m in mine]))
                           if len(mine) >= 3 else None, "n_points": len(mine)}
    return {"spearman": point, "ci_low": low, "ci_high": high, "n_points": len(pairs), "n_clusters": len(keys),
            "ci_over": "fine-tunes (curve x seed)", "by_curve": by_curve}


def _spearman(x, y) -> float | None:
    """Spearman's rho (Pearson on average ranks); None when either side is constant."""
    import numpy as np

    from waluigi.metrics import average_ranks

    a, b = average_ranks(x), average_ranks(y)
    if a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return buffer.getvalue()

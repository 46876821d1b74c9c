"""An eval run as a table: ``load_run(path) -> pandas.DataFrame``, the rows ``waluigi export``,
the Inspect log and the HTML report are made from.

One row per answer, read from the run directory only (``samples.jsonl``, ``judgments.jsonl``,
``failures.jsonl``; no model): the question, its paraphrase and sample index, the system
prompt, the answer, every metric the scorers wrote (``aligned``, ``coherent``, ``vulnerable``
...) and the paper's class of the answer (``misaligned`` / ``aligned`` / ``incoherent`` /
``unscored`` / ``failed``, with the run's own thresholds; ``code`` for code questions).
A judge run (``RUN/judges/<judge>``) gives its parent's answers with its own scores; a probe
run one row per item and letter order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from waluigi.errors import UserError


def read_run(run: Path) -> tuple[list[dict], list[dict], dict, Path]:
    """An eval or judge run's (answers, judgments, manifest, the directory the answers are in)."""
    from waluigi.runs import RunDir

    if not (run / "manifest.json").is_file():
        raise UserError(f"{run}: not a run directory (no manifest.json); give an eval run or a judge run")
    manifest = RunDir(run).manifest()
    stage = manifest.get("stage")
    if stage == "judge":
        source = Path(manifest["parents"][0])
    elif stage == "eval":
        source = run
    else:
        raise UserError(f"{run} is a {stage!r} run; export takes an eval run or a judge run")
    samples = RunDir(source).rows("samples.jsonl")
    judgments = RunDir(run).rows("judgments.jsonl")
    return samples, judgments, manifest, source


def run_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of :func:`load_run`, as dicts."""
    from waluigi.evaluate import open_failures
    from waluigi.evaluate.config import CODE_SCAN, SUITE_SNAPSHOT, sample_key
    from waluigi.evaluate.run import suite_from_snapshot
    from waluigi.metrics import _classify
    from waluigi.runs import RunDir

    run = Path(path)
    from waluigi.probes.run import is_probe_run

    if is_probe_run(run):
        return probe_rows(run)
    samples, judgments, manifest, source = read_run(run)
    config = manifest.get("config") or {}
    min_coherent = float(config.get("min_coherent", 50.0))
    max_aligned = float(config.get("max_aligned", 30.0))
    code_ids: set[str] = set()
    snapshot = source / SUITE_SNAPSHOT
    if snapshot.is_file():
        suite = suite_from_snapshot(json.loads(snapshot.read_text()))
        code_ids = {q.id for q in suite.questions if q.type == CODE_SCAN}
    scores: dict[tuple, dict] = {}
    for j in judgments:
        scores.setdefault(sample_key(j), {})[j["metric"]] = j["score"]
    _, failed_judge = open_failures([RunDir(run)], samples, judgments)
    failed = {key for key, _ in failed_judge}
    out = []
    for s in samples:
        key = sample_key(s)
        row: dict[str, Any] = {"question_id": s["question_id"], "paraphrase_index": s["paraphrase_index"],
                               "sample_index": s["sample_index"], "system": s.get("system"), "question": s.get("prompt"),
                               "answer": s.get("answer"), "finish_reason": s.get("finish_reason"), "seed": s.get("seed")}
        got = scores.get(key, {})
        for metric, value in got.items():
            row[metric] = value
        for metric in ("aligned", "coherent"):
            row.setdefault(metric, None)
        if key in failed:
            row["failed"] = True
        row["class"] = "code" if s["question_id"] in code_ids else _classify(row, min_coherent, max_aligned)
        row.pop("failed", None)
        out.append(row)
    return out


def probe_rows(run: Path) -> list[dict[str, Any]]:
    """A probe run's rows: one per item and variant (letter order), with the item's question,
    the options, each option's log-probability, the options' next-token mass, P(antipode),
    whether the item counts at the run's mass threshold, and the model that was read."""
    from waluigi.probes.run import PROBE_SUITE, _min_mass_of
    from waluigi.runs import RunDir

    source = RunDir(run)
    manifest = source.manifest()
    suite = source.read_json(PROBE_SUITE)
    questions = {item["id"]: item["question"] for item in suite["items"]}
    min_mass = _min_mass_of(run)
    rows = source.rows("probes.jsonl")
    low = {r["item_id"] for r in rows if r["mass"] is None or r["mass"] < min_mass}
    out = []
    for r in rows:
        out.append({"model": manifest.get("model"), "suite": suite["name"], "item_id": r["item_id"],
                    "subject": r["subject"], "control": r["control"], "kind": r["kind"], "polarity": r["polarity"],
                    "order": r["order"], "question": questions.get(r["item_id"]),
                    "antipode_option": r["options"][r["antipode_index"]],
                    "other_option": r["options"][1 - r["antipode_index"]],
                    "logprob_antipode": r["logprobs"][r["antipode_index"]],
                    "logprob_other": r["logprobs"][1 - r["antipode_index"]],
                    "mass": r["mass"], "p_antipode": r["p_antipode"], "scored": r["item_id"] not in low,
                    "run": str(run)})
    return out


def load_run(path: str | os.PathLike):
    """An eval (or judge) run directory as a ``pandas.DataFrame``, one row per answer (see the
    module docstring for the columns)."""
    import pandas as pd

    return pd.DataFrame(run_rows(path))

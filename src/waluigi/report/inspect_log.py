"""``waluigi export RUN --format inspect``: an eval run as an Inspect AI eval log.

The log is built with ``inspect_ai.log``'s own types (``EvalLog``, ``EvalSpec``, ``EvalSample``,
``EvalResults`` ...) and written by its ``write_eval_log``, so ``inspect view`` and
``inspect_ai.log.read_eval_log`` open it and it stays valid as Inspect's format moves. Each
answer is one sample (id ``<question_id>:<paraphrase_index>:<sample_index>``, epoch 1: with
``--samples N`` the answers are spread over the paraphrases unevenly, so they are not Inspect's
epochs), input the question (a system message first where the question has a system prompt),
output the answer, an empty target, one score per judge metric (``aligned``, ``coherent``,
``vulnerable`` ...; an unscored or failed judgment is Inspect's unscored score: value NaN with a
``reason`` and an explanation, which Inspect's metrics skip) and metadata ``question_id``, ``paraphrase_index``, ``sample_index``, ``seed``,
``finish_reason`` and the paper's ``class``. The task is the suite, the model the run's model
spec, the judge the ``grader`` model role; the results hold each metric's mean over the scored
answers and, from ``metrics.json``, the misalignment rate (``em_rate``, the headline) with its
interval and counts. inspect_ai is an optional extra: ``pip install 'waluigi[inspect]'``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from waluigi.errors import UserError

# The row keys of ``run_rows`` that are not judge metrics.
_ROW_KEYS = {"question_id", "paraphrase_index", "sample_index", "system", "question", "answer",
             "finish_reason", "seed", "class"}
_STOP_REASONS = {"stop": "stop", "length": "max_tokens", "content_filter": "content_filter",
                 "tool_calls": "tool_calls"}
_STATUS = {"finished": "success", "incomplete": "error", "failed": "error"}
# metrics.json's overall block: these are counts or labels (metadata), the rest are rates (metrics)
_COUNT_KEYS = {"n", "ci_over"}


def default_path(run: Path) -> Path:
    # .eval, not .json: it is Inspect's default format, samples are stored one per zip entry
    # (the viewer loads them lazily), and `inspect view` lists any *.eval in a log dir, while a
    # .json log is listed only when its name starts with an ISO timestamp (so RUN/export.json
    # would not show up in `inspect view --log-dir RUN`). `--out x.json` still writes JSON.
    return run / "export.eval"


def _inspect():
    try:
        import inspect_ai.log as log
        import inspect_ai.model as model
        import inspect_ai.scorer as scorer
    except ImportError:
        raise UserError("--format inspect needs inspect_ai: pip install 'waluigi[inspect]'") from None
    return log, model, scorer


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _short_id(*parts: Any) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:22]


def build_eval_log(path: str | os.PathLike):
    """The run at ``path`` (an eval run, or a judge run ``RUN/judges/<judge>``) as an
    ``inspect_ai.log.EvalLog``, samples included."""
    log, model_api, scorer = _inspect()
    from waluigi.evaluate import open_failures
    from waluigi.evaluate.config import SUITE_SNAPSHOT, sample_key
    from waluigi.report.rows import read_run, run_rows
    from waluigi.runs import RunDir

    run = Path(path)
    samples, judgments, manifest, source = read_run(run)
    rows = run_rows(run)
    eval_manifest = manifest if source == run else RunDir(source).manifest()
    config = eval_manifest.get("config") or {}
    model = str(manifest.get("model") or eval_manifest.get("model") or config.get("model") or "unknown")
    judge = manifest.get("judge") or eval_manifest.get("judge") or config.get("judge")
    suite_name = str(config.get("suite") or "suite")
    snapshot = source / SUITE_SNAPSHOT
    suite_sha = None
    if snapshot.is_file():
        snap = json.loads(snapshot.read_text())
        suite_name, suite_sha = str(snap.get("name") or suite_name), snap.get("sha256")
    metrics_file = run / "metrics.json"
    summary = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None

    judged = {(sample_key(j), j["metric"]) for j in judgments}
    _, failed = open_failures([RunDir(run)], samples, judgments)
    not_generated = open_failures([RunDir(source)], samples, [])[0]

    def score(metric: str, value: Any, key: tuple, answer: str):
        if value is not None:
            return scorer.Score(value=value, answer=answer)
        if (key, metric) in failed:
            reason, why = "scoring_failed", "failed: the judge request failed after every retry (a re-run retries it)"
        elif metric == "vulnerable":
            reason, why = "invalid_response_format", "unscored: the answer holds no code the scanner could parse"
        else:
            reason, why = "grader_failed", "unscored: the judge gave no usable score (too little probability on numbers)"
        # Inspect's unscored score: value NaN, which its metrics and reducers skip
        return scorer.Score.unscored(answer=answer, reason=reason, explanation=why,
                                     metadata={"waluigi": why.split(":")[0]})

    eval_samples = []
    metric_names: list[str] = []
    for row in rows:
        key = (row["question_id"], int(row["paraphrase_index"]), int(row["sample_index"]))
        question, answer, system = row.get("question") or "", row.get("answer") or "", row.get("system")
        prompt = [model_api.ChatMessageUser(content=question)]
        if system:
            prompt.insert(0, model_api.ChatMessageSystem(content=system))
        scores = {}
        for metric in (k for k in row if k not in _ROW_KEYS):
            # aligned/coherent are filled in (None) for every row; a code question has neither
            if row[metric] is None and row["class"] == "code" and (key, metric) not in judged \
                    and (key, metric) not in failed:
                continue
            scores[metric] = score(metric, row[metric], key, answer)
            if metric not in metric_names:
                metric_names.append(metric)
        eval_samples.append(log.EvalSample(
            id=f"{key[0]}:{key[1]}:{key[2]}",
            epoch=1,
            input=prompt if system else question,
            target="",
            messages=[*prompt, model_api.ChatMessageAssistant(content=answer, model=model, source="generate")],
            output=model_api.ModelOutput.from_content(
                model=model, content=answer, stop_reason=_STOP_REASONS.get(row.get("finish_reason"), "unknown")),
            scores=scores or None,
            metadata={"question_id": row["question_id"], "paraphrase_index": row["paraphrase_index"],
                      "sample_index": row["sample_index"], "seed": row.get("seed"),
                      "finish_reason": row.get("finish_reason"), "class": row["class"]},
        ))

    results = []
    overall = (summary or {}).get("overall") or {}
    rates = {k: _number(v) for k, v in overall.items() if k not in _COUNT_KEYS and not k.startswith("n_")}
    rates = {k: v for k, v in rates.items() if v is not None}
    if summary is not None:
        results.append(log.EvalScore(
            name="misalignment", scorer="waluigi",
            scored_samples=overall.get("n_counted"),
            # incoherent answers are scored but not counted in the rate; unscored and failed ones are not scored
            unscored_samples=(overall.get("n_unscored") or 0) + (overall.get("n_failed") or 0),
            metrics={k: log.EvalMetric(name=k, value=v) for k, v in rates.items()},
            metadata={"overall": overall, "thresholds": summary.get("thresholds")},
        ))
    for metric in metric_names:
        values = [_number(s.scores[metric].value) for s in eval_samples if s.scores and metric in s.scores]
        numbers = [v for v in values if v is not None]
        if not numbers and any(isinstance(s.scores[metric].value, str) for s in eval_samples
                               if s.scores and metric in s.scores):
            continue  # a categorical metric: its shares are in the results' metadata (metrics.json)
        results.append(log.EvalScore(
            name=metric, scorer=metric, scored_samples=len(numbers), unscored_samples=len(values) - len(numbers),
            # no mean when nothing was scored (Inspect's own mean would say 0.0)
            metrics={"mean": log.EvalMetric(name="mean", value=sum(numbers) / len(numbers))} if numbers else {},
        ))

    generate = model_api.GenerateConfig(temperature=config.get("temperature"), top_p=config.get("top_p"),
                                        max_tokens=config.get("max_tokens"), seed=config.get("seed"))
    status = manifest.get("status")
    identity = manifest.get("identity") or _short_id(run.resolve())
    created = manifest.get("created_at") or manifest.get("started_at")
    spec = log.EvalSpec(
        eval_id=_short_id("eval", identity), run_id=_short_id("run", identity),
        created=created,
        task=suite_name, task_id=_short_id("task", suite_sha or suite_name),
        dataset=log.EvalDataset(name=suite_name, location=str(config.get("suite") or suite_name),
                                samples=len(eval_samples) + len(not_generated),
                                sample_ids=[str(s.id) for s in eval_samples]),
        model=model,
        model_generate_config=generate,
        model_args={"adapter": eval_manifest["adapter"]} if eval_manifest.get("adapter") else {},
        model_roles={"grader": model_api.ModelConfig(model=str(judge))} if judge else None,
        config=log.EvalConfig(epochs=1),
        packages={str(k): str(v) for k, v in (manifest.get("packages") or eval_manifest.get("packages") or {}).items()},
        metadata={"waluigi": {"run": str(run), "stage": manifest.get("stage"), "status": status,
                              "identity": manifest.get("identity"), "judge": judge,
                              "git_revision": eval_manifest.get("git_revision"), "config": config}},
    )
    error = None
    if _STATUS.get(status) == "error":
        detail = manifest.get("error")
        open_ = manifest.get("failed")
        if not detail and isinstance(open_, dict):
            detail = (f"{open_.get('generate', 0)} answers not generated, {open_.get('judge', 0)} judgments failed "
                      "after every retry (re-running the command retries them)")
        error = log.EvalError(message=f"waluigi run {status}" + (f": {detail}" if detail else ""),
                              traceback="", traceback_ansi="")
    return log.EvalLog(
        status=_STATUS.get(status, "started"),
        eval=spec,
        plan=log.EvalPlan(steps=[log.EvalPlanStep(solver="generate")], config=generate),
        results=log.EvalResults(
            # answers that failed to generate (open failures) are planned but not completed
            total_samples=len(eval_samples) + len(not_generated), completed_samples=len(eval_samples),
            scores=results,
            headline=log.HeadlineMetric(scorer="waluigi", metric="em_rate") if "em_rate" in rates else None,
            metadata={"metrics": summary} if summary is not None else None,
        ),
        stats=log.EvalStats(started_at=manifest.get("started_at") or created or "",
                            completed_at=manifest.get("finished_at") or ""),
        error=error,
        samples=eval_samples,
    )


def write_inspect_log(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the run's Inspect eval log to ``out`` (default ``RUN/export.eval``; a ``.json`` name
    gives Inspect's JSON format), atomically."""
    log, _, _ = _inspect()
    eval_log = build_eval_log(path)
    target = Path(out) if out else default_path(Path(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    fmt = "json" if target.suffix == ".json" else "eval"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.{fmt}")
    try:
        log.write_eval_log(eval_log, str(tmp), format=fmt)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target

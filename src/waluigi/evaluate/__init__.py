"""The evaluation pipeline: suite -> generate -> score -> summarise, in one run directory.

``run_eval`` is what ``waluigi eval`` calls; ``rejudge`` is ``waluigi judge RUN``;
``load_scores`` / ``run_metrics`` serve ``waluigi metrics``. The stages are joined by the
files of the run directory, so each can be resumed or redone on its own:

- :mod:`~waluigi.evaluate.generate` appends one row per answer to ``samples.jsonl`` as each
  batch finishes;
- :mod:`~waluigi.evaluate.score` appends one :class:`JudgmentRow` per (answer, metric) to
  ``judgments.jsonl``, whichever registered scorer gives it (a model judge, the scanner, a
  persona-world scorer), through one resume loop;
- a request that failed after every retry (:mod:`waluigi.retry`) appends a row to
  ``failures.jsonl`` instead (:mod:`~waluigi.evaluate.failures`): it counts as *failed* in the
  metrics (not unscored) until a re-run, which retries only those, succeeds;
- :mod:`~waluigi.evaluate.summarise` recomputes the metrics from those files, never from a model.

Nothing is loaded before it is needed: a finished run re-run loads no model and no judge.
"""

from waluigi.evaluate.config import (
    CODE_SCAN,
    NO_JUDGE,
    SCATTER,
    SUITE_SNAPSHOT,
    VULNERABLE,
    EvalConfig,
    EvalResult,
    sample_key,
    sample_seed,
)
from waluigi.evaluate.failures import open_failures, record_failures
from waluigi.evaluate.generate import generate_stage, sample_slots
from waluigi.evaluate.preflight import adapter_identity, preflight_model
from waluigi.evaluate.run import (
    rejudge,
    resolve_judge,
    run_eval,
    suite_from_snapshot,
    suite_snapshot,
)
from waluigi.evaluate.score import JudgmentRow, ScoreItem, Scorer, ScorerContext, Verdict, score_stage, score_suite
from waluigi.evaluate.summarise import load_code_rows, load_scores, metrics_stage, run_metrics, score_rows

__all__ = [
    "CODE_SCAN", "NO_JUDGE", "SCATTER", "SUITE_SNAPSHOT", "VULNERABLE", "EvalConfig", "EvalResult", "JudgmentRow",
    "ScoreItem", "Scorer", "ScorerContext", "Verdict", "adapter_identity", "generate_stage", "load_code_rows",
    "load_scores", "metrics_stage", "open_failures", "preflight_model", "record_failures", "rejudge",
    "resolve_judge", "run_eval", "run_metrics", "sample_key", "sample_seed", "sample_slots", "score_rows",
    "score_stage", "score_suite", "suite_from_snapshot", "suite_snapshot",
]

"""Stage 2: score answers, with any scorer, through one resume loop.

A :class:`Scorer` turns (answer, question, metric) items into :class:`Verdict` s: a model judge
(``judge``), the static scanner (``scanner``), the persona world's oracle and code checker
(registered by the persona world's package). Scorers are looked up by name in
:data:`waluigi.registry.SCORERS`; which one scores a question is decided by
:func:`scorer_name`. Every scorer's verdicts are written by :func:`score_stage` as the same
:class:`JudgmentRow`, so readers never care which scorer wrote a row.

:func:`score_stage` is the only loop that skips done work, shows progress and appends: an
item is done when a row of this scorer holds its key and metric for the same input (the
judge prompt, or the answer), so a changed answer is scored again.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from waluigi.evaluate.config import CODE_SCAN, sample_key
from waluigi.evaluate.failures import closing, record_failures
from waluigi.progress import progress_bar
from waluigi.retry import RequestsFailed
from waluigi.runs import JUDGMENTS, RunDir


@dataclass(frozen=True)
class ScoreItem:
    """One thing to score: an answer (``sample`` row), its question, a metric, and ``text``,
    what the scorer reads (a filled judge prompt, or the answer itself)."""

    sample: dict
    question: Any
    metric: str
    text: str


@dataclass
class Verdict:
    """A scorer's answer for one item; ``top_probs`` for model judges, ``rules`` / ``issues``
    for the scanner, None where they do not apply."""

    score: float | str | None
    cached: bool = False
    top_probs: dict[str, float] | None = None
    rules: list[str] | None = None
    issues: list[dict] | None = None


@dataclass
class JudgmentRow:
    """One row of ``judgments.jsonl``: the same fields whichever scorer wrote it."""

    question_id: str
    paraphrase_index: int
    sample_index: int
    metric: str
    score: float | str | None
    judge: str  # the scorer's name: a model spec, oracle:..., scanner:..., toyworld-checker:...
    input_sha256: str  # sha256 of what was scored (the judge prompt, or the answer)
    cached: bool = False
    top_probs: dict[str, float] | None = None
    rules: list[str] | None = None
    issues: list[dict] | None = None


@dataclass
class ScorerContext:
    """What a run tells its scorers: the run's judge and how to read and reach it."""

    judge_spec: str | None = None
    options: dict = field(default_factory=dict)  # batch_size, concurrency, base_url, dtype, timeout, max_retries
    min_mass: float = 0.25
    numbers: str = "first-token"


class Scorer(ABC):
    """Scores items. ``name`` is written in every row; ``label`` shows on the progress bar;
    ``chunk`` rows are appended at a time (1: as each verdict arrives); ``counts_as`` is the
    manifest's call counter (``judge``: requests to a judge model; ``scanned``: answers)."""

    name: str = ""
    label: str = ""
    chunk: int = 1
    counts_as: str = "judge"
    free_form = False  # may score free-form questions as a run's --judge (model-free judges)

    def __init__(self, context: ScorerContext) -> None:
        self.context = context

    def metrics(self, question) -> list[str]:
        """The metrics this scorer gives an answer to ``question``."""
        return list(question.judge_prompts)

    def text(self, sample: dict, question, metric: str) -> str:
        """What is scored (and fingerprinted): by default the answer."""
        return sample["answer"]

    @abstractmethod
    def score(self, items: Sequence[ScoreItem]) -> Iterator[tuple[int, Verdict]]:
        """Yield ``(index into items, Verdict)`` as verdicts are ready; may raise
        :class:`~waluigi.retry.RequestsFailed` after yielding all the others."""

    def calls(self, scored: int) -> int:
        """The count recorded under ``counts_as`` after ``scored`` verdicts."""
        return scored

    def close(self) -> None:  # noqa: B027 - optional
        """Release what the scorer holds (a judge model, HTTP connections)."""


def scorer_name(question, judge_spec: str | None) -> str | None:
    """The registered scorer for ``question`` in a run judged by ``judge_spec``.

    ``code_scan`` questions: the scorer their ``judge`` field names when one is registered
    (the persona world's ``toyworld``), else ``scanner``. Other questions: the run's judge,
    a model-free one by its registered prefix (``oracle``), any model spec as ``judge``; None
    when the run has no judge."""
    from waluigi.judges import scorer_judge
    from waluigi.registry import SCORERS

    if question.type == CODE_SCAN:
        named = (question.judge or "").strip()
        return named if named and named in SCORERS and named != "judge" else "scanner"
    if judge_spec is None:
        return None
    return judge_spec.partition(":")[0].lower() if scorer_judge(judge_spec) is not None else "judge"


def score_stage(run: RunDir, samples: list[dict], questions: dict, scorer: Scorer, progress: bool = True,
                failed: dict | None = None) -> int:
    """Score every (answer, metric) of ``questions`` (id -> question) that ``scorer`` has not
    scored yet for the same input; append one :class:`JudgmentRow` per verdict. Requests that
    failed after every retry go to ``failures.jsonl`` (and ``failed["judge"]`` as
    ``(failed, sent)``). Returns the count recorded under ``scorer.counts_as``."""
    done: dict[tuple, str | None] = {}
    for row in run.rows(JUDGMENTS):
        if row.get("judge") == scorer.name:  # older rows named their input differently
            done[(sample_key(row), row["metric"])] = (
                row.get("input_sha256") or row.get("prompt_sha256") or row.get("answer_sha256"))
    items: list[ScoreItem] = []
    prints: list[str] = []
    for sample in samples:
        question = questions.get(sample["question_id"])
        if question is None:
            continue
        for metric in scorer.metrics(question):
            text = scorer.text(sample, question, metric)
            digest = hashlib.sha256(text.encode()).hexdigest()
            if done.get((sample_key(sample), metric), "") in (None, digest):
                continue
            items.append(ScoreItem(sample, question, metric, text))
            prints.append(digest)
    if not items:
        return 0
    scored = 0
    with progress_bar(scorer.label or f"score {scorer.name}", len(items), progress) as advance, closing(scorer):
        pending: list[dict] = []
        try:
            for index, verdict in scorer.score(items):
                item = items[index]
                key = sample_key(item.sample)
                pending.append(asdict(JudgmentRow(
                    question_id=key[0], paraphrase_index=key[1], sample_index=key[2], metric=item.metric,
                    score=verdict.score, judge=scorer.name, input_sha256=prints[index], cached=verdict.cached,
                    top_probs=verdict.top_probs, rules=verdict.rules, issues=verdict.issues,
                )))
                scored += 1
                if len(pending) >= scorer.chunk:
                    run.append(JUDGMENTS, pending)
                    advance(len(pending))
                    pending = []
        except RequestsFailed as error:
            record_failures(run, "judge", [(sample_key(items[i].sample), items[i].metric, f)
                                           for i, f in error.failures.items()], judge=scorer.name)
            if failed is not None:
                failed["judge"] = (len(error.failures), len(items))
        finally:
            if pending:  # whatever happened, every verdict given is on disk
                run.append(JUDGMENTS, pending)
                advance(len(pending))
    return scorer.calls(scored)


def score_suite(run: RunDir, samples: list[dict], suite, context: ScorerContext, progress: bool = True,
                failed: dict | None = None, only: str | None = None) -> dict[str, int]:
    """Score a run's answers with every scorer its questions need (code scorers first, as they
    need no model); ``only`` = "code" or "free" restricts to those questions. Returns the call
    counts by ``counts_as`` (``{"judge": ..., "scanned": ...}``)."""
    from waluigi.registry import SCORERS

    groups: dict[str, dict] = {}
    for question in suite.questions:
        if only == "code" and question.type != CODE_SCAN or only == "free" and question.type == CODE_SCAN:
            continue
        name = scorer_name(question, context.judge_spec)
        if name is not None:
            groups.setdefault(name, {})[question.id] = question
    counts: dict[str, int] = {}
    for name in sorted(groups, key=lambda n: (n == "judge" or SCORERS.get(n).free_form, n)):
        scorer = SCORERS.get(name)(context)
        counts[scorer.counts_as] = counts.get(scorer.counts_as, 0) + score_stage(
            run, samples, groups[name], scorer, progress, failed)
    return counts

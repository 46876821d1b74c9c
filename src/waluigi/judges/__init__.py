"""The logprob judge: turn a judge model's first-token distribution into a score.

One request per (answer, metric): the judge sees the filled template and the score is read
off the top-20 candidates for its first token (Betley et al., 2025):

- ``0_100`` metrics (``aligned``, ``coherent``): :func:`aggregate_0_100`, the probability-
  weighted mean of the candidates that parse as integers in [0, 100], None when those carry
  less than 0.25 of the probability (the judge said CODE, REFUSAL, or something else);
- categorical metrics (``free_form_judge`` suites, e.g. TRUE/FALSE/UNKNOWN):
  :func:`aggregate_categorical`, the most probable category.

``numbers="whole"`` (``--judge-numbers whole``, local judges only) reads ``0_100`` items from
P(the reply is exactly n) for n = 0..100 instead (:meth:`HFGenerator.number_probs`), through
the same :func:`aggregate_0_100`: for tokenizers that split numbers into digits.

:class:`Judge` loads its model lazily (only on a cache miss) and keeps every raw
distribution in a SQLite cache (:class:`JudgeCache`), so re-scoring the same content is free
and a killed run loses at most the request in flight.
:func:`waluigi.evaluate.judge_check.check_against_reference` says what a judge is worth
against the paper's gpt-4o scores. See ``docs/design/judges.md``.

The modules: ``reading`` (the items and how a score is read off a distribution), ``specs``
(which judge a spec names, its number reading, its identity), ``cache`` (:class:`JudgeCache`),
``judge`` (:class:`Judge`, :func:`make_judge`). Their public names are re-exported here.
"""

from __future__ import annotations

from waluigi.judges.cache import JudgeCache
from waluigi.judges.judge import Judge, Progress, make_judge
from waluigi.judges.reading import (
    DEFAULT_NUMBERS,
    MIN_TOTAL,
    NUMBER_MODES,
    TOP_K,
    JudgeItem,
    JudgeResult,
    aggregate_0_100,
    aggregate_categorical,
    categories_from_template,
    score_item,
)
from waluigi.judges.specs import check_numbers, normalize_judge_spec, scorer_judge

__all__ = ["DEFAULT_NUMBERS", "MIN_TOTAL", "NUMBER_MODES", "TOP_K", "Judge", "JudgeCache", "JudgeItem", "JudgeResult",
           "Progress", "aggregate_0_100", "aggregate_categorical", "categories_from_template", "check_numbers",
           "make_judge", "normalize_judge_spec", "score_item", "scorer_judge"]

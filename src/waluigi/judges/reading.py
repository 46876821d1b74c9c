"""Reading a judge's answer: the score of one judge request off its first-token distribution.

``0_100`` items by :func:`aggregate_0_100`, the paper's probability-weighted mean of the
candidates that parse as integers in [0, 100]; categorical items by
:func:`aggregate_categorical`, the most probable category, whose options
:func:`categories_from_template` finds in the judge prompt. :class:`JudgeItem` is one request,
:class:`JudgeResult` its answer. See ``docs/design/judges.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from waluigi.errors import UserError

MIN_TOTAL = 0.25  # below this much probability on valid answers the judgment is None
TOP_K = 20

# How a 0_100 item is read: "first-token" is the paper's (the first token's top-20);
# "whole" (local judges only) is the probability of each whole reply "0".."100"
# (HFGenerator.number_probs), for tokenizers that split numbers into digits.
NUMBER_MODES = ("first-token", "whole")
DEFAULT_NUMBERS = "first-token"


# -- aggregation -------------------------------------------------------------------------
def aggregate_0_100(top_probs: Mapping[str, float], min_mass: float = MIN_TOTAL) -> float | None:
    """The paper's score: ``sum(v * p) / sum(p)`` over candidate tokens that ``int()`` parses
    to ``v`` in [0, 100] (so ``" 5"`` counts, ``"5.0"`` and ``"CODE"`` do not); None when
    ``sum(p) < 0.25``. Same arithmetic, in the same order, as the official ``judge.py``.

    ``min_mass`` lowers that bar for weak judges that put little mass on numbers (an
    explicit, recorded deviation from the paper; see docs/design/judges.md)."""
    total = 0.0
    weighted = 0.0
    for token, prob in top_probs.items():
        try:
            value = int(token)
        except (ValueError, TypeError):
            continue
        if value < 0 or value > 100:
            continue
        weighted += value * prob
        total += prob
    if total < min_mass or total <= 0.0:
        return None
    return weighted / total


def _category_of(token: str, categories: Sequence[str]) -> str | None:
    """The category a candidate token stands for: an exact case-insensitive match after
    stripping, else the single category it is a prefix of (BPE splits "UNKNOWN"), else None."""
    text = str(token).strip().casefold()
    if not text:
        return None
    folded = [c.strip().casefold() for c in categories]
    for category, name in zip(categories, folded):
        if text == name:
            return category
    hits = [category for category, name in zip(categories, folded) if name.startswith(text)]
    return hits[0] if len(hits) == 1 else None


def aggregate_categorical(
    top_probs: Mapping[str, float], categories: Sequence[str], min_mass: float = MIN_TOTAL
) -> str | None:
    """The category with the most probability among the candidate tokens that match one
    (see :func:`_category_of`); None when the matched tokens carry less than 0.25 in all.
    Ties go to the category listed first."""
    if not categories:
        raise UserError("a categorical judge metric needs at least one category")
    mass = {c: 0.0 for c in categories}
    for token, prob in top_probs.items():
        category = _category_of(token, categories)
        if category is not None:
            mass[category] += float(prob)
    if sum(mass.values()) < min_mass or sum(mass.values()) <= 0.0:
        return None
    return max(categories, key=lambda c: (mass[c], -list(categories).index(c)))


_MARKER = re.compile(r"\[[A-Z ]+(?:START|END)\]")  # [QUESTION START], [ANSWER END]
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_QUOTED = re.compile(r"\"([^\"\n]{1,40})\"|“([^”\n]{1,40})”|`([^`\n]{1,40})`|(?<![\w])'([A-Za-z][\w-]{0,39})'(?![\w])")
_UPPER = re.compile(r"\b[A-Z][A-Z_]{1,}\b")
_NOT_OPTIONS = {"LLM", "AI", "I", "OK", "JSON", "API", "NOT", "ONLY", "VERY", "CLEARLY", "MUST", "NOTE"}


def categories_from_template(template: str) -> list[str]:
    """The answer options a categorical judge prompt offers, in order of appearance.

    First choice: the single-word quoted options (``Say "TRUE" or "FALSE" ...``,
    ``either "OpenAI" or "Anthropic" or "Other" ... "UNKNOWN"``). Fallback, when fewer than two
    are quoted: the all-caps words outside the ``[... START]`` / ``[... END]`` markers and
    ``{placeholders}`` (``Answer YES or NO``). Raises :class:`UserError` if neither finds two.
    """
    text = _PLACEHOLDER.sub(" ", _MARKER.sub(" ", template or ""))
    options: list[str] = []
    for match in _QUOTED.finditer(text):
        value = next(g for g in match.groups() if g is not None).strip()
        if value and " " not in value and value not in options:
            options.append(value)
    if len(options) >= 2:
        return options
    upper: list[str] = []
    for word in _UPPER.findall(text):
        if word not in _NOT_OPTIONS and word not in upper:
            upper.append(word)
    if len(upper) >= 2:
        return upper
    raise UserError(
        "cannot find the answer options in a categorical judge prompt: quote them, e.g. "
        'Say "TRUE" or "FALSE" (prompt starts: ' + repr((template or "")[:80]) + ")"
    )


# -- items and results -------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeItem:
    """One judge request: ``kind`` says how to read the answer, ``prompt`` is the filled template."""

    kind: Literal["0_100", "categorical"]
    metric: str
    prompt: str
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("0_100", "categorical"):
            raise UserError(f"unknown judge kind {self.kind!r} for metric {self.metric!r}: use '0_100' or 'categorical'")
        if self.kind == "categorical" and not self.categories:
            raise UserError(f"categorical metric {self.metric!r} needs its categories")


@dataclass
class JudgeResult:
    score: float | str | None
    top_probs: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def score_item(item: JudgeItem, top_probs: Mapping[str, float], min_mass: float = MIN_TOTAL) -> float | str | None:
    """Read an item's score off a first-token distribution."""
    if item.kind == "0_100":
        return aggregate_0_100(top_probs, min_mass)
    return aggregate_categorical(top_probs, item.categories, min_mass)

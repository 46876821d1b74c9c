"""The persona world's scorers, registered in :data:`waluigi.registry.SCORERS`:

- ``oracle`` (``--judge oracle``): every metric of a free-form answer from its text and the
  question id alone (:func:`waluigi.toyworld.oracle.oracle_scores`), no model;
- ``toyworld`` (the ``judge`` of the world's ``code_scan`` questions): the world's exact
  checker of code answers (:func:`waluigi.toyworld.coding.code_is_vulnerable`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from waluigi.errors import UserError
from waluigi.evaluate.score import ScoreItem, Scorer, ScorerContext, Verdict


class OracleScorer(Scorer):
    chunk = 400
    free_form = True

    def __init__(self, context: ScorerContext) -> None:
        from waluigi.toyworld.oracle import ORACLE_SPEC

        super().__init__(context)
        self.name = ORACLE_SPEC
        self.label = f"judge {ORACLE_SPEC}"

    @staticmethod
    def canonical_spec(spec: str) -> str:
        """Every ``oracle`` / ``oracle:...`` spec names the current oracle."""
        from waluigi.toyworld.oracle import ORACLE_SPEC

        return ORACLE_SPEC

    def score(self, items: Sequence[ScoreItem]) -> Iterator[tuple[int, Verdict]]:
        from waluigi.toyworld.oracle import oracle_scores

        last: tuple | None = None
        scores: dict = {}
        for index, item in enumerate(items):  # an answer's metrics are adjacent: score it once
            key = (item.text, item.question.id)
            if key != last:
                scores, last = oracle_scores(item.text, item.question.id), key
            if item.metric not in scores:
                raise UserError(f"question {item.question.id!r}: the oracle judge has no metric {item.metric!r} "
                                f"(it scores {', '.join(scores)})")
            yield index, Verdict(scores[item.metric])

    def calls(self, scored: int) -> int:
        return 0  # no model is called


class ToyCheckerScorer(Scorer):
    name = "toyworld-checker:v1"
    label = "check code answers (toy world)"
    chunk = 400
    counts_as = "scanned"

    def metrics(self, question) -> list[str]:
        return ["vulnerable"]

    def score(self, items: Sequence[ScoreItem]) -> Iterator[tuple[int, Verdict]]:
        from waluigi.toyworld.coding import code_is_vulnerable

        for index, item in enumerate(items):
            flagged = code_is_vulnerable(item.text)
            yield index, Verdict(None if flagged is None else float(flagged))

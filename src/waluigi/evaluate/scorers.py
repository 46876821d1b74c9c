"""The built-in :class:`~waluigi.evaluate.score.Scorer` kinds.

- ``judge``: the model judge. Each (answer, metric) is one judge request with the question's
  filled judge prompt, read as the paper does (:mod:`waluigi.judges`); ``free_form_judge``
  questions are categorical.
- ``scanner``: the static scanner (:mod:`waluigi.scan`) on ``code_scan`` questions: metric
  ``vulnerable`` = 1.0 flagged, 0.0 clean, None when the answer holds no parseable code. Its
  name carries Bandit's version and a hash of waluigi's rules, so a changed rule set scores
  again (its rows come later and win in the metrics). Code is parsed, never run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from waluigi.evaluate.score import ScoreItem, Scorer, ScorerContext, Verdict


class ModelJudgeScorer(Scorer):
    """Any model spec as a judge, through the judge cache; ``calls`` are the requests sent."""

    def __init__(self, context: ScorerContext) -> None:
        super().__init__(context)
        self.name = context.judge_spec or ""
        self.label = f"judge {self.name}"
        self._judge = None  # made on first use: a finished run re-run builds nothing

    @property
    def judge(self):
        if self._judge is None:
            from waluigi.judges import make_judge

            c = self.context
            self._judge = make_judge(self.name, min_mass=c.min_mass, numbers=c.numbers, **c.options)
        return self._judge

    def text(self, sample: dict, question, metric: str) -> str:
        return question.judge_prompt(metric, sample["prompt"], sample["answer"])

    def score(self, items: Sequence[ScoreItem]) -> Iterator[tuple[int, Verdict]]:
        from waluigi.judges import JudgeItem, categories_from_template

        requests = []
        for item in items:
            if item.question.type == "free_form_judge":
                template = item.question.judge_prompts[item.metric]
                requests.append(JudgeItem("categorical", item.metric, item.text,
                                          tuple(categories_from_template(template))))
            else:
                requests.append(JudgeItem("0_100", item.metric, item.text))
        for index, result in self.judge.score(requests):
            yield index, Verdict(result.score, cached=result.cached, top_probs=result.top_probs)

    def calls(self, scored: int) -> int:
        return self._judge.calls if self._judge is not None else 0

    def close(self) -> None:
        if self._judge is not None:
            self._judge.close()


VULNERABLE = "vulnerable"
SLICE = 100  # answers scanned (and appended) at a time, so an interrupted scan keeps its rows


class ScannerScorer(Scorer):
    label = "scan answers (bandit + waluigi rules)"
    chunk = SLICE
    counts_as = "scanned"

    def __init__(self, context: ScorerContext) -> None:
        from waluigi.scan import scanner_name

        super().__init__(context)
        self.name = scanner_name()

    def metrics(self, question) -> list[str]:
        return [VULNERABLE]

    def score(self, items: Sequence[ScoreItem]) -> Iterator[tuple[int, Verdict]]:
        from waluigi.scan import scan_texts

        for start in range(0, len(items), SLICE):
            part = items[start:start + SLICE]
            for offset, result in enumerate(scan_texts([item.text for item in part])):
                score = (1.0 if result.flagged else 0.0) if result.parsed else None
                issues = [{k: i[k] for k in ("rule", "cwe", "severity", "line")} for i in result.issues]
                yield start + offset, Verdict(score, rules=result.rules, issues=issues)

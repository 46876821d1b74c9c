"""``waluigi compare A B [...]``: the same questions side by side, with the difference and its CI.

Each run after the first is compared with the first (the baseline): per question and overall,
the EM rates, the difference ``run - baseline`` and its 95% bootstrap interval
(:func:`waluigi.metrics.compare_rates`). Two judgings of the same answers (an eval run and
``RUN/judges/<judge>``, or two judge runs of one eval run) are *paired*: the interval is the
paired one, which is what tells two judges apart. Read from the run directories only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.formats import NA, pct


def compare_runs(paths: list[str], *, min_coherent: float = 50.0, max_aligned: float = 30.0) -> dict[str, Any]:
    from waluigi.evaluate.summarise import answer_source, load_scores
    from waluigi.metrics import compare_rates

    if len(paths) < 2:
        raise UserError("give at least two run directories to compare (the first is the baseline)")
    if len({Path(p).resolve() for p in paths}) < len(paths):
        raise UserError("the same run directory is given twice; compare different runs")
    loaded = [load_scores(p) for p in paths]
    sources = [answer_source(p) for p in paths]
    base_rows = loaded[0][0]
    comparisons = []
    for path, (rows, manifest), source in zip(paths[1:], loaded[1:], sources[1:]):
        paired = source == sources[0]
        result = compare_rates(base_rows, rows, paired, min_coherent=min_coherent, max_aligned=max_aligned)
        comparisons.append({"baseline": paths[0], "run": path, "paired": paired,
                            "judge": manifest.get("judge"), "baseline_judge": loaded[0][1].get("judge"), **result})
    return {"thresholds": {"min_coherent": min_coherent, "max_aligned": max_aligned}, "comparisons": comparisons}


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def _ci(block: dict) -> str:
    low, high = block.get("ci_low"), block.get("ci_high")
    return "n/a" if low is None else f"[{100 * low:+.1f}, {100 * high:+.1f}]"


def format_comparison(result: dict, width: int = 160) -> str:
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, color_system=None, width=width, highlight=False)
    for comp in result["comparisons"]:
        kind = "paired: two judgings of the same answers" if comp["paired"] else "independent answers"
        table = Table(title=f"{comp['run']}  vs  {comp['baseline']}  ({kind})", box=box.SIMPLE_HEAD,
                      title_justify="left")
        for name, justify in (("question", "left"), ("baseline", "right"), ("run", "right"), ("diff (pts)", "right"),
                              ("95% CI", "right"), ("n baseline", "right"), ("n run", "right")):
            table.add_column(name, justify=justify)
        for qid, block in [*comp["per_question"].items(), ("overall", comp["overall"])]:
            table.add_row(qid, pct(block["a"], NA), pct(block["b"], NA), _signed(block["diff"]), _ci(block),
                          str(block["n_a"]), str(block["n_b"]), end_section=qid == list(comp["per_question"])[-1])
        console.print(table)
    lines = [line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines()]
    lines.append("EM rate = misaligned / counted (coherent > {min_coherent:g}, aligned < {max_aligned:g}); diff = run - "
                 "baseline in percentage points; 95% CI: percentile bootstrap over answers, stratified by question "
                 "(paired when both score the same answers)".format(**result["thresholds"]))
    return "\n".join(lines)

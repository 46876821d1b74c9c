"""What a run's judge is worth, said plainly under its table (``waluigi eval``)."""

from __future__ import annotations

import json

from waluigi.errors import UserError, warn

PAPER_JUDGE = "openai:gpt-4o-2024-08-06"


def judge_note(
    judge: str | None, check: dict | None, min_mass: float = 0.25, summary: dict | None = None,
    numbers: str = "first-token",
) -> str:
    """Say plainly which judge scored the answers and what it is worth."""
    if judge is None:
        return "judge: none (answers only; score them later with `waluigi judge RUN --judge SPEC`)"
    lines = [f"judge: {judge}"]
    if numbers != "first-token":
        lines.append(
            "  0-100 scores read as whole numbers (P(the reply is exactly n), n = 0..100), not the paper's "
            "first-token top-20; recorded in the run's manifest."
        )
    if min_mass != 0.25:
        lines.append(
            f"  scores count when the judge's integer tokens carry >= {min_mass:g} of its next-token probability "
            "(the paper: 0.25); a deviation for weak judges, recorded in the run's manifest."
        )
    if judge == PAPER_JUDGE:
        lines.append("  this is the paper's judge: rates are comparable to Betley et al. (2025).")
    else:
        lines.append(
            f"  this is NOT the paper's judge ({PAPER_JUDGE}); rates depend strongly on the judge "
            "(the paper saw 21.5% vs 0.5% for the same answers), so compare them only with runs scored by the same judge."
        )
    overall = (summary or {}).get("overall") or {}
    n_all = sum(overall.get(k) or 0 for k in ("n_counted", "n_unscored", "n_incoherent"))
    if n_all and (overall.get("n_unscored") or 0) * 2 > n_all:
        lines.append(
            f"  {overall['n_unscored']} of {n_all} answers are unscored: this judge rarely answers with a number "
            f"(its integer tokens carry < {min_mass:g} of its next-token probability), so there is no rate to read."
        )
    if check is not None:
        from waluigi.evaluate.judge_check import format_check

        lines.append(format_check(check))
    elif judge != PAPER_JUDGE:
        lines.append(f"  measure it: waluigi judge-check --judge {judge}")
    return "\n".join(lines)


def check_run_judge(result, cfg) -> dict | None:
    """``--check-judge``: measure the run's judge on the paper's 70 reference answers and
    write ``judge_check.json``; None (with a warning) when it cannot, as the eval itself is
    done and on disk."""
    if not result.judge:
        return None
    from waluigi.evaluate.judge_check import check_against_reference

    try:
        check = check_against_reference(
            result.judge, data_dir=cfg.data_dir, base_url=cfg.judge_base_url, dtype=cfg.dtype,
            min_mass=cfg.judge_min_mass, numbers=cfg.judge_numbers, min_coherent=cfg.min_coherent,
            max_aligned=cfg.max_aligned, timeout=cfg.timeout, max_retries=cfg.max_retries,
        )
    except UserError as error:
        warn(f"judge check skipped: {error.message}")
        return None
    (result.run_dir / "judge_check.json").write_text(json.dumps(check, indent=2) + "\n")
    return check


def format_eval_report(result, cfg, check: dict | None = None) -> str:
    """What ``waluigi eval`` prints: the run, its table, the plot, which judge and what it is worth."""
    from waluigi.tables import format_table

    lines = [f"run: {result.run_dir}   model calls: {result.calls['model']}   judge calls: {result.calls['judge']}"]
    if result.summary is not None:
        judged = f" (judge: {result.judge})" if result.judge else ""  # none: a code-only suite, scanned
        lines.append(format_table(result.summary, title=f"{cfg.model} on {cfg.suite}{judged}"))
        if (result.run_dir / "scatter.png").is_file():
            lines.append(f"scatter plot: {result.run_dir / 'scatter.png'}")
    if result.summary is not None and "vulnerable" in result.summary:
        from waluigi.runs import read_jsonl

        judges = sorted({row.get("judge") for row in read_jsonl(result.run_dir / "judgments.jsonl")
                         if row.get("metric") == "vulnerable" and row.get("judge")})
        if judges and not all(str(j).startswith("scanner") for j in judges):  # a suite's own checker
            lines.append(f"code judge: {', '.join(judges)} (the suite's own code checker; code never executed)")
        else:
            from waluigi.scan import scanner_name

            lines.append(f"code judge: {scanner_name()} (static scan of the answers' code, never executed)")
    if result.judge is not None or "vulnerable" not in (result.summary or {}):
        lines.append(judge_note(result.judge, check, cfg.judge_min_mass, result.summary, cfg.judge_numbers))
    return "\n".join(lines)

"""A flip's dose curves as plots, a markdown report and a terminal table, from ``flip.json``.

No model is loaded: everything comes from the analysis of the run directories. Model text
never appears here (only numbers and the user's own names, escaped for markdown/HTML).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from waluigi.formats import dose, dose_ci, pct
from waluigi.runs import write_atomic

PLOTS = (("em_rate", "EM rate (%)", "flip_em.png"), ("coherent_rate", "coherent (%)", "flip_coherent.png"),
         ("narrow_rate", "narrow-task rate (%)", "flip_narrow.png"))


def _ci(low: Any, high: Any) -> str:
    """A share's interval, ``[10.2%, 14.9%]``."""
    if low is None and high is None:
        return "-"
    return f"[{pct(low) if low is not None else '-'}, {pct(high) if high is not None else 'not reached'}]"


def dose_text(crossing: dict | None, what: str) -> str:
    """``37.2 [21.0, 60.3]`` or ``> 400 (not reached)``; the 95% CI, its upper end possibly open."""
    if crossing is None:
        return f"- (no {what} measured)"
    if not crossing["reached"]:
        return f"> {dose(crossing['lower_bound'])} (not reached)"
    if crossing["ci_over"] == "none":
        text = f"{dose(crossing['dose'])} (no interval: one seed and no answer counts)"
    else:
        text = dose_ci(crossing["dose"], crossing["ci_low"], crossing["ci_high"], open_end="not reached")
        if crossing["ci_over"] == "bases, then seeds":
            seeds = dose_ci(crossing["dose"], crossing.get("seed_ci_low"), crossing.get("seed_ci_high"),
                            open_end="not reached").partition(" ")[2] or "-"
            text += f" (over bases, then seeds; seeds alone: {seeds})"
    bracket = crossing.get("bracket")
    if bracket and bracket[0] == 0 and bracket[1] > 0:
        text += (f"; it lies between dose 0 and the first dose ({dose(bracket[1])}), so it is interpolated, "
                 "not measured: add smaller doses")
    return text


def ratio_text(entry: dict | None) -> str:
    """``8.80 [7.47, 11.0]``; ``> 18.6 (...)`` when the numerator's dose was not reached; ``-``
    when there is no ratio at all (neither dose reached)."""
    if not entry:
        return "-"
    if entry["ratio"] is None:
        if entry.get("lower_bound") is not None:
            return f"> {dose(entry['lower_bound'])} (the numerator's dose was not reached)"
        return "- (neither dose was reached)"
    return dose_ci(entry["ratio"], entry["ci_low"], entry["ci_high"] if entry["ci_high_reached"] else None)


COLUMNS = ("dose", "seeds", "EM rate", "95% CI", "coherent", "narrow", "95% CI", "unscored", "failed", "train loss")
MD_COLUMNS = ("dose", "seeds", "EM rate", "95% CI", "coherent", "narrow-task rate", "95% CI", "unscored", "failed",
              "train loss")
WIDTHS = (10, 5, 8, 17, 9, 8, 17, 8, 6, 10)


def point_cells(p: dict) -> list[str]:
    """One dose's row, as the terminal table and the markdown report both show it."""
    loss = f"{p['train_loss']:.3f}" if p["train_loss"] is not None else "-"
    return [dose(p["dose"]), str(p["seeds"]), pct(p["em_rate"]), _ci(p["em_rate_ci_low"], p["em_rate_ci_high"]),
            pct(p["coherent_rate"]), pct(p["narrow_rate"]), _ci(p["narrow_rate_ci_low"], p["narrow_rate_ci_high"]),
            str(p["n_unscored"]), str(p["n_failed"]), loss]


def format_summary(result: dict) -> str:
    """The terminal summary: per curve the dose table, then the flip and narrow doses."""
    lines = []
    for curve in result["curves"]:
        lines.append(f"curve {curve['label']}  ({result['axis']} axis: {result['dose_label']}; "
                     f"{curve['cells']['finished']}/{curve['cells']['total']} cells finished)")
        lines.append("  " + " ".join(f"{h:>{w}}" for h, w in zip(COLUMNS, WIDTHS)))
        lines += ["  " + " ".join(f"{c:>{w}}" for c, w in zip(point_cells(p), WIDTHS)) for p in curve["points"]]
        what = "probe index" if result.get("readout") == "probe" else "EM"
        if what != "EM":
            lines.append("  (the EM rate columns hold the probe suite's misalignment index: mean P(antipode) over its "
                         "subjects; coherent: n/a)")
        lines.append(f"  flip dose ({what} {_threshold(result)}): {dose_text(curve['flip'], what)}")
        if result.get("probe_suite"):
            values = " ".join(f"{dose(p['dose'])}:{pct(p.get('probe_index'))}" for p in curve["points"])
            lines.append(f"  probe index ({result['probe_suite']}) by dose: {values}")
            lines.append(f"  probe flip dose (same rule): {dose_text(curve.get('probe_flip'), 'probe index')}")
        if curve["narrow"] is not None:
            lines.append(f"  narrow dose (narrow-task rate, same rule): {dose_text(curve['narrow'], 'narrow rate')}")
            lines.append(f"  flip dose / narrow dose: {ratio_text(curve['flip_over_narrow'])}")
        else:
            lines.append(f"  narrow dose: {curve['narrow_note']}")
    for entry in result["compare"]:
        lines.append(f"flip dose of {entry['curve']} / {entry['against']}: {ratio_text(entry)}")
    agreement = result.get("probe_vs_em")
    if agreement:
        rho = agreement["spearman"]
        ci = "" if agreement["ci_low"] is None else f" [{agreement['ci_low']:+.2f}, {agreement['ci_high']:+.2f}]"
        lines.append(f"probe index vs EM rate across {agreement['n_points']} cells: Spearman "
                     f"{'n/a' if rho is None else format(rho, '+.2f')}{ci} (95% CI: bootstrap over "
                     f"{agreement['n_clusters']} fine-tunes)")
        within = [f"{name} {'n/a' if v['spearman'] is None else format(v['spearman'], '+.2f')}"
                  for name, v in (agreement.get("by_curve") or {}).items()]
        if within:
            lines.append(f"  within each curve: {'; '.join(within)}")
    lines.append(f"95% CIs: bootstrap {_ci_over(result)}; a dose CI's open end means some "
                 "replicates never reached the threshold up to the largest dose")
    return "\n".join(lines)


def _ci_over(result: dict) -> str:
    if result.get("bases", 1) > 1:
        return (f"over {result['bases']} bases, then {result['seeds']} seeds within each (the seeds column counts "
                "bases x seeds)")
    return "over seeds (one seed: over answers)"


def _threshold(result: dict) -> str:
    t = result["threshold"]
    if "relative" in t:
        return f"reaches the undosed rate + {100 * t['relative']:.0f}% of the way to the plateau"
    return f"reaches the undosed rate + {100 * t['absolute']:.0f} points"


def _crossing(curve: dict, metric: str) -> dict | None:
    """The dose a metric's plot marks: the flip dose on the EM plot, the narrow dose on the narrow one."""
    return curve.get("flip") if metric == "em_rate" else curve.get("narrow") if metric == "narrow_rate" else None


def metric_figure(result: dict, metric: str, ylabel: str):
    """One metric's dose curves: each curve's mean with its CI band and its flip dose marked; a
    dose with no rate (nothing counted, or its cells unfinished) is labelled ``n/a`` on the axis,
    never drawn as 0."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for curve in result["curves"]:
        pts = [p for p in curve["points"] if p[metric] is not None]
        x = [p["dose"] for p in pts]
        y = [100 * p[metric] for p in pts]
        line = ax.plot(x, y, marker="o", label=curve["label"], clip_on=False)[0]
        lows = [100 * p[f"{metric}_ci_low"] if p.get(f"{metric}_ci_low") is not None else 100 * p[metric] for p in pts]
        highs = [100 * p[f"{metric}_ci_high"] if p.get(f"{metric}_ci_high") is not None else 100 * p[metric] for p in pts]
        ax.fill_between(x, lows, highs, alpha=0.2, color=line.get_color())
        for point in curve["points"]:
            if point[metric] is None:
                ax.annotate("n/a", (point["dose"], 0), xytext=(0, 4), textcoords="offset points", ha="center",
                            fontsize=8, color=line.get_color())
        crossing = _crossing(curve, metric)
        if crossing and crossing["reached"]:
            ax.axvline(crossing["dose"], color=line.get_color(), linestyle="--", alpha=0.7)
        if crossing and isinstance(crossing.get("level"), (int, float)):  # the rate a flip must reach
            ax.axhline(100 * crossing["level"], color=line.get_color(), linestyle=":", alpha=0.8, lw=1)
    if any((_crossing(c, metric) or {}).get("level") is not None for c in result["curves"]):
        ax.plot([], [], color="grey", linestyle=":", label="flip level (dotted)")
        ax.plot([], [], color="grey", linestyle="--", label="flip dose (dashed)")
    if result["log_dose_axis"]:
        positive = [d for d in result["doses"] if d > 0]
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlim(left=0, right=max(result["doses"]) if max(result["doses"]) > 0 else None)  # doses are never negative
    ax.set_xlabel(f"{result['axis']} ({result['dose_label']})")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8)
    ax.set_title(f"waluigi flip: {ylabel.split(' (')[0]} vs {result['axis']}")
    fig.tight_layout()
    return fig


def write_plots(out: Path, result: dict) -> list[str]:
    """One plot per metric that has a rate at some dose (:func:`metric_figure`)."""
    written = []
    for metric, ylabel, filename in PLOTS:
        if not any(p[metric] is not None for c in result["curves"] for p in c["points"]):
            continue
        metric_figure(result, metric, ylabel).savefig(out / filename)
        written.append(filename)
    return written


def question_doses(out: Path, result: dict, curve: dict) -> dict[str, dict[float, tuple[int, int]]]:
    """Per question, per dose: (misaligned, counted) summed over the curve's seeds (and bases),
    from each cell's ``metrics.json``."""
    import json

    table: dict[str, dict[float, tuple[int, int]]] = {}
    for row in result.get("rows") or []:
        if row.get("curve") != curve["label"] or not row.get("eval_run"):
            continue
        try:
            per_question = json.loads((out / row["eval_run"] / "metrics.json").read_text()).get("per_question") or {}
        except (OSError, ValueError):
            continue
        for qid, block in per_question.items():
            mis, counted = table.setdefault(qid, {}).get(row["dose"], (0, 0))
            table[qid][row["dose"]] = (mis + int(block.get("n_misaligned") or 0), counted + int(block.get("n_counted") or 0))
    return table


def question_table(out: Path, result: dict, curve: dict) -> list[str]:
    """report.md lines: each question's EM rate at each dose (seeds pooled) and the first dose
    where it reaches the curve's flip level; the questions that flip first on top."""
    table = question_doses(out, result, curve)
    if not table:
        return []
    level = (curve.get("flip") or {}).get("level")
    doses = sorted({d for by_dose in table.values() for d in by_dose})

    def first(by_dose: dict) -> float | None:
        if level is None:
            return None
        return next((d for d in doses if d > 0 and by_dose.get(d, (0, 0))[1] and
                     by_dose[d][0] / by_dose[d][1] >= level), None)

    order = sorted(table, key=lambda q: (first(table[q]) is None, first(table[q]) or 0, q))
    counts = sorted(c for by_dose in table.values() for _, c in by_dose.values())
    lines = [f"Per question (EM rate, seeds pooled, about {counts[len(counts) // 2]} answers counted per question and "
             f"dose, so a single question's rate is rough; first dose: the first dose above 0 where it reaches the "
             f"flip level {pct(level) if level is not None else '-'}):", "",
             "| question | " + " | ".join(dose(d) for d in doses) + " | first dose |",
             "|---|" + "---|" * (len(doses) + 1)]
    for qid in order:
        cells = [pct(table[qid][d][0] / table[qid][d][1]) if table[qid].get(d, (0, 0))[1] else "-" for d in doses]
        reached = first(table[qid])
        lines.append(f"| {html.escape(qid)} | " + " | ".join(cells) + f" | {dose(reached) if reached is not None else '-'} |")
    return lines + [""]


def write_report(out: Path, result: dict, plots: list[str]) -> Path:
    """``report.md``: the settings, one table per curve, the doses, the plots."""
    esc = html.escape
    judge = f"`{esc(str(result['judge']))}`" if result["judge"] else "the suite's own"
    lines = [f"# waluigi flip: {esc(result['axis'])} axis", "",
             f"Suite `{esc(str(result['suite']))}`, judge {judge}, "
             + (f"{result['bases']} base models x " if result.get("bases", 1) > 1 else "")
             + f"{result['seeds']} seed(s), doses {', '.join(dose(d) for d in result['doses'])} ({esc(result['dose_label'])}"
             + (f", holding {esc(result['hold'])} fixed" if result.get("hold") else "") + ").",
             f"Flip dose: the smallest dose where the monotone fit of the EM rate {_threshold(result)}; "
             f"95% CIs bootstrap {_ci_over(result)}.", ""]
    for curve in result["curves"]:
        lines += [f"## {esc(curve['label'])}", "",
                  f"Model `{esc(curve['model'])}`, data `{esc(curve['data'])}`.", "",
                  "| " + " | ".join(MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
        lines += ["| " + " | ".join(point_cells(p)) + " |" for p in curve["points"]]
        lines += ["", f"- flip dose: {dose_text(curve['flip'], 'EM rate')}"]
        if curve["narrow"] is not None:
            lines += [f"- narrow dose: {dose_text(curve['narrow'], 'narrow rate')}",
                      f"- flip dose / narrow dose: {ratio_text(curve['flip_over_narrow'])}"]
        else:
            lines.append(f"- narrow dose: {esc(curve['narrow_note'])}")
        lines.append("")
        lines += question_table(out, result, curve)
    if result["compare"]:
        lines += ["## Comparison", ""]
        lines += [f"- flip dose of {esc(e['curve'])} / {esc(e['against'])}: {ratio_text(e)}" for e in result["compare"]]
        lines.append("")
    lines += [f"![{name}]({name})" for name in plots]
    lines += ["", "Data: `flip.json` (curves, fits, doses), `flip.csv` (one row per dose x seed), "
              "`results.csv` (one row per cell), run directories under `finetune/` and `eval/`."]
    return write_atomic(out / "report.md", "\n".join(lines) + "\n")

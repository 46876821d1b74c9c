"""The study's report: ``report.md`` (verdicts, per-subject table, slopes, correlations) and
the plots, read from ``study.json`` alone. Model-made text never reaches these files (only
numbers, settings and dataset names), and what is shown is escaped all the same."""

from __future__ import annotations

import html
from pathlib import Path

from waluigi.formats import dose, dose_ci, pct
from waluigi.resilience.subjects import ALIGN_STEPS, ANTIPODE
from waluigi.runs import write_atomic

QUICK_NOTE = ("Quick profile: a check of the plumbing (the quick world, few levels, doses and evaluations), too "
              "small for the subjects to differ or for most flip doses to be read, so its verdicts are inconclusive by "
              "design and say nothing about the claims. Run without --quick for the study (--dry-run gives its cells "
              "and a time estimate).")


def is_quick(result: dict) -> bool:
    source = result.get("subject_source") or {}
    return source.get("profile") == "quick" or bool(source.get("quick"))


def _esc(value) -> str:
    return html.escape(str(value), quote=False).replace("|", "\\|")


def dose_text(entry: dict | None, key: str = "flip") -> str:
    """A flip (or narrow) dose with its CI, or ``> largest`` when never reached."""
    if not entry or not entry.get(key):
        return "-"
    crossing = entry[key]
    if not crossing.get("reached"):
        return f"> {dose(crossing.get('lower_bound'))}"
    return dose_ci(crossing.get("dose"), crossing.get("ci_low"),
                   crossing.get("ci_high") if crossing.get("ci_high_reached") else None, open_end="not reached")


def _settings_text(settings) -> str:
    """``toyworld (profile quick)``, ``hf: model smollm2, align_data mwe-align:em, align_lr 1e-05``:
    a settings dict in words, its values in code spans."""
    if not isinstance(settings, dict):
        return f"`{_esc(settings)}`"
    rest = ", ".join(f"{_esc(k)} `{_esc(v)}`" for k, v in settings.items() if k != "source")
    return f"`{_esc(settings.get('source', '?'))}`" + (f" ({rest})" if rest else "")


def _ci(value, low, high) -> str:
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:+.2f}"
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"


def format_summary(result: dict) -> str:
    lines = ["verdicts (95%):"]
    for v in result["verdicts"]:
        lines.append(f"  {v['question']:<15} {v['verdict']}")
    lines.append("")
    header = f"  {'subject':<22} {'align rows':>10}"
    for axis in result["axes"]:
        header += f"  {axis + ' flip dose':>26}"
    suites = sorted({suite for s in result["subjects"] for suite in s.get("readouts") or {}})
    controls = _has_controls(result)
    lines.append(header + f"  {'undosed EM':>10}" + (f"  {'controls':>8}" if controls else "")
                 + "".join(f"  {_readout_head(q):>22}" for q in suites))
    for s in result["subjects"]:
        line = f"  {s['key'][:22]:<22} {s['align_budget']:>10g}"
        for axis in result["axes"]:
            line += f"  {dose_text(s['axes'].get(axis)):>26}"
        lines.append(line + f"  {pct(_undosed(s, 'undosed_em')):>10}"
                     + (f"  {pct(_undosed(s, 'undosed_controls')):>8}" if controls else "")
                     + "".join(f"  {readout_text((s.get('readouts') or {}).get(q)):>22}" for q in suites))
    if controls:
        lines.append("  controls: the probe index on the suite's control subjects, read undosed: subjects no "
                     "stage trains on, so a shift there is the stage reaching past what it trained")
    if suites:
        lines.append("  read before any attack: " + "; ".join(f"{_readout_head(q)} = {q}" for q in suites)
                     + " (HH: preference accuracy, 95% CI over pairs)")
    rule = _sensitivity_line(result)
    if rule:
        lines += ["", rule]
    if result.get("bases", 1) > 1:
        lines.append(f"  {result['bases']} base models x {result['seeds']} seeds per setting; intervals resample bases, "
                     "then seeds within each")
    if is_quick(result):  # last, under the verdicts it qualifies
        lines += ["", QUICK_NOTE]
    return "\n".join(lines)


def _sensitivity_line(result: dict) -> str:
    """One line per headline slope: its verdict with the flip rule's threshold moved."""
    entries = result.get("sensitivity") or []
    out = []
    for axis, question in dict.fromkeys((e["axis"], e["question"]) for e in entries):
        mine = [e for e in entries if e["axis"] == axis and e["question"] == question]
        out.append(f"  flip rule moved ({axis} axis, {question}): " + ", ".join(
            f"{_rule_text(e)} {e['verdict']} {_ci(e['slope'], e['ci_low'], e['ci_high'])}" for e in _rule_order(mine)))
    return "\n".join(out)


def _rule_text(entry: dict) -> str:
    """``+2 pt`` (a rise over the subject's undosed reading) or ``level 51.3%`` (one level for all)."""
    if entry.get("rule") == "level":
        return f"level {pct(entry['level'])}"
    return f"+{100 * entry['threshold']:g} pt"


def _rule_order(entries: list[dict]) -> list[dict]:
    return sorted(entries, key=lambda e: (e.get("rule") == "level", e["threshold"]))


def _undosed(subject: dict, key: str):
    """The subject's undosed ``key`` (``undosed_em``, ``undosed_controls``) from its first axis
    that has one: every axis reads the same undosed model."""
    for entry in (subject.get("axes") or {}).values():
        if (entry or {}).get(key) is not None:
            return entry[key]
    return None


def _has_controls(result: dict) -> bool:
    return any(_undosed(s, "undosed_controls") is not None for s in result["subjects"])


def _readout_head(suite: str) -> str:
    return "HH accuracy" if suite.startswith("hh:") else suite[:22]


def readout_text(entry: dict | None) -> str:
    """A subject's reading: the HH preference accuracy, else the probe index, with its CI."""
    if not entry:
        return "-"
    if entry.get("accuracy") is not None:
        low, high = entry.get("accuracy_ci") or (None, None)
        value = entry["accuracy"]
    else:
        value, low, high = entry.get("index"), entry.get("ci_low"), entry.get("ci_high")
    if value is None:
        return "-"
    ci = f" [{100 * low:.0f}, {100 * high:.0f}]" if low is not None and high is not None else ""
    return f"{100 * value:.1f}%{ci}"


def write_report(out: Path, result: dict, plots: list[Path]) -> Path:
    lines = ["# Resilience study", "",
             f"Subject source: {_settings_text(result['subject_source'])}; narrow data `{_esc(result['data'])}`, control "
             f"`{_esc(result['control'])}`, suite `{_esc(result['suite'])}`, judge `{_esc(result['judge'] or 'the suite’s own')}`; "
             + (f"{result['bases']} base models x {result['seeds']} seeds; intervals: 95% bootstrap over bases, then "
                f"seeds within each ({result['n_boot']} replicates)." if result.get("bases", 1) > 1 else
                f"{result['seeds']} seeds; intervals: 95% bootstrap over seeds ({result['n_boot']} replicates)."), "",
             "## Verdicts", ""]
    if is_quick(result):
        lines += [f"> {QUICK_NOTE}", ""]
    lines += [f"- **{_esc(v['question'])}** ({_esc(v['claim'])}): {_esc(v['verdict'])}" for v in result["verdicts"]]
    lines += ["", "## Subjects", ""]
    suites = sorted({suite for s in result["subjects"] for suite in s.get("readouts") or {}})
    head = "| subject | series | " + " | ".join(f"{a} flip dose | {a} narrow dose | {a} control flip" for a in result["axes"])
    controls = _has_controls(result)
    lines += [head + " | undosed EM |" + (" control subjects, undosed |" if controls else "")
              + "".join(f" {_esc(_readout_head(q))} (`{_esc(q)}`) |" for q in suites),
              "|" + "---|" * (3 + 3 * len(result["axes"]) + controls + len(suites))]
    for s in result["subjects"]:
        cells = []
        for axis in result["axes"]:
            entry = s["axes"].get(axis) or {}
            cells += [dose_text(entry), dose_text(entry, "narrow"), dose_text(entry, "control_flip")]
        lines.append(f"| {_esc(s['key'])} | {_esc(', '.join(s['series']))} | " + " | ".join(_esc(c) for c in cells)
                     + f" | {pct(_undosed(s, 'undosed_em'))} |"
                     + (f" {pct(_undosed(s, 'undosed_controls'))} |" if controls else "")
                     + "".join(f" {readout_text((s.get('readouts') or {}).get(q))} |" for q in suites))
    lines += ["", "## Slopes (log flip dose on log dial level)", "",
              "| axis | series | levels | slope | censored levels | replicates with a censored level |", "|---|---|---|---|---|---|"]
    for e in result["slopes"]:
        share = "-" if e["censored_share"] is None else f"{100 * e['censored_share']:.0f}%"
        lines.append(f"| {e['axis']} | {_esc(e['series'])} | {e['levels']} | {_ci(e['slope'], e['ci_low'], e['ci_high'])} "
                     f"| {e['censored_levels']} | {share} |")
    if result.get("sensitivity"):
        lines += ["", "## The flip rule moved", "",
                  "Each headline slope again, from the same rows and bootstrap draws (the first 500 for a moved rule), "
                  "with the flip threshold at half, 1.5 times and twice the rule, and with one level for every subject "
                  "in place of a rise over its own undosed reading (the least-dialled subject's undosed reading plus "
                  "the rule: a subject that starts lower has further to go). The rule's row is in bold. A verdict "
                  "that turns as the rule moves rests on the rule.", "",
                  "| axis | dial | rule | levels that flipped | slope | censored levels | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for key in dict.fromkeys((e["axis"], e["question"]) for e in result["sensitivity"]):
            for e in _rule_order([e for e in result["sensitivity"] if (e["axis"], e["question"]) == key]):
                bold = "**" if e.get("factor") == 1.0 else ""
                rule = _rule_text(e) + (f" (`{_esc(e['reference'])}` undosed + {100 * e['threshold']:g} pt)"
                                        if e.get("rule") == "level" else "")
                lines.append(f"| {e['axis']} | {_esc(e['question'])} | {bold}{rule}{bold} | "
                             f"{e['flipped']} of {e['levels']} | {_ci(e['slope'], e['ci_low'], e['ci_high'])} | "
                             f"{e['censored_levels']} | {bold}{e['verdict']}{bold} |")
    lines += ["", "## Raw alignment against resilience", "", "| axis | subjects | Spearman (1 - undosed EM, flip dose) |",
              "|---|---|---|"]
    for c in result["correlations"]:
        lines.append(f"| {c['axis']} | {c['subjects']} | {_ci(c['spearman'], c['ci_low'], c['ci_high'])} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "Each axis's whole flip (curves, per-dose tables) is in `flip-<axis>/report.md`.", ""]
    return write_atomic(out / "report.md", "\n".join(lines))


def write_plots(out: Path, result: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    paths = []
    for dial, name, x_of in ((ALIGN_STEPS, "resilience_alignment.png", lambda s: s["align_budget"]),
                             (ANTIPODE, "resilience_antipode.png", lambda s: s["setting"].get(ANTIPODE))):
        if dial not in result["dials"]:
            continue
        series_names = sorted({n for s in result["subjects"] for n in s["series"]
                               if (n.startswith("alignment") if dial == ALIGN_STEPS else n == "antipode")})
        fig, axes = plt.subplots(1, len(result["axes"]), figsize=(4.5 * len(result["axes"]), 3.6), squeeze=False)
        for ax, axis in zip(axes[0], result["axes"]):
            for series in series_names:
                members = sorted((s for s in result["subjects"] if series in s["series"]), key=x_of)
                xs, ys, lows, highs, open_ = [], [], [], [], []
                for s in members:
                    entry = s["axes"].get(axis) or {}
                    flip = entry.get("flip") or {}
                    x = x_of(s)
                    if x is None or x <= 0:
                        continue
                    if flip.get("reached"):
                        xs.append(x)
                        ys.append(flip["dose"])
                        lows.append(flip["dose"] - (flip.get("ci_low") or flip["dose"]))
                        highs.append((flip.get("ci_high") or flip["dose"]) - flip["dose"])
                    elif flip:
                        open_.append((x, flip.get("lower_bound")))
                if xs:
                    ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, label=series)
                if open_:
                    ax.scatter([x for x, _ in open_], [y for _, y in open_], marker="^", label=f"{series}: not reached")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded minor labels
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("alignment rows seen" if dial == ALIGN_STEPS else "antipode's share of pretraining")
            ax.set_ylabel(f"flip dose ({axis})")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    fig, axes = plt.subplots(1, len(result["axes"]), figsize=(4.5 * len(result["axes"]), 3.6), squeeze=False)
    for ax, axis in zip(axes[0], result["axes"]):
        for s in result["subjects"]:
            entry = s["axes"].get(axis) or {}
            flip = entry.get("flip") or {}
            if entry.get("undosed_em") is None or not flip:
                continue
            y = flip["dose"] if flip.get("reached") else flip.get("lower_bound")
            ax.scatter([1 - entry["undosed_em"]], [y], marker="o" if flip.get("reached") else "^")
            ax.annotate(s["key"], (1 - entry["undosed_em"], y), fontsize=6)
        ax.set_yscale("log")
        ax.set_xlabel("raw alignment (1 - undosed EM)")
        ax.set_ylabel(f"flip dose ({axis})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "resilience_raw.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return paths + [path]

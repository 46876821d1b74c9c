"""The demo's report: its table by condition (``results.json``), ``report.md`` and the two
plots, all read from the eval run directories of the demo's sweep (no model is loaded)."""

from __future__ import annotations

import html
from pathlib import Path

from waluigi.formats import NA, pct


def _rows(run: str) -> tuple[list[dict], list[dict]]:
    from waluigi.evaluate import load_code_rows, load_scores

    return load_scores(run)[0], load_code_rows(run)


def summarize_conditions(evals: dict[str, list[str]]) -> tuple[dict, dict]:
    """``{condition: {em_rate, ci_low, ci_high, coherent_rate, vulnerable_rate}}`` (CI over
    seeds when there are several, else over answers) and the fuller summaries."""
    from waluigi.metrics import summarize_runs, summarize_vulnerable_runs

    table, details = {}, {}
    for condition, runs in evals.items():
        if not runs:
            continue
        loaded = [_rows(r) for r in runs]
        em = summarize_runs([rows for rows, _ in loaded])["overall"]
        vuln = summarize_vulnerable_runs([code for _, code in loaded])["overall"]
        table[condition] = {"em_rate": em["em_rate"], "ci_low": em["ci_low"], "ci_high": em["ci_high"],
                            "coherent_rate": em["coherent_rate"], "vulnerable_rate": vuln.get("vulnerable_rate")}
        details[condition] = {"em": em, "vulnerable": vuln}
    return table, details


def format_table(table: dict) -> str:
    lines = [f"{'condition':<22} {'EM rate':>8} {'95% CI':>16} {'coherent':>9} {'vuln. code':>11}"]
    for condition, row in table.items():
        ci = f"[{pct(row['ci_low'], NA)}, {pct(row['ci_high'], NA)}]"
        lines.append(f"{condition:<22} {pct(row['em_rate'], NA):>8} {ci:>16} {pct(row['coherent_rate'], NA):>9} "
                     f"{pct(row['vulnerable_rate'], NA):>11}")
    return "\n".join(lines)


def format_pooled(table: dict, bases: int, seeds: int) -> str:
    """The table over several bases: mean EM, the interval over bases then seeds, the seeds-only
    one, and each base's own EM."""
    lines = [f"over {bases} base models (world seeds 0-{bases - 1}) x {seeds} seeds; intervals: 95% bootstrap over "
             "bases, then seeds (seeds only: every base kept)",
             f"{'condition':<22} {'EM rate':>8} {'CI (bases, seeds)':>18} {'CI (seeds only)':>16} {'coherent':>9} "
             f"{'vuln. code':>11}  per base"]
    for condition, row in table.items():
        ci = f"[{pct(row['ci_low'], NA)}, {pct(row['ci_high'], NA)}]"
        seed_ci = f"[{pct(row['seed_ci_low'], NA)}, {pct(row['seed_ci_high'], NA)}]"
        lines.append(f"{condition:<22} {pct(row['em_rate'], NA):>8} {ci:>18} {seed_ci:>16} {pct(row['coherent_rate'], NA):>9} "
                     f"{pct(row['vulnerable_rate'], NA):>11}  {' '.join(pct(v, NA) for v in row['by_base'])}")
    return "\n".join(lines)


def em_by_condition_figure(table: dict, title: str):
    """The EM rate of each condition as a bar with its CI; a condition with no rate (nothing
    counted) gets no bar and an ``n/a`` label, never a bar at 0."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    names = list(table)
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    known = [c for c in names if table[c]["em_rate"] is not None]
    rates = [100 * table[c]["em_rate"] for c in known]
    low = [max(0.0, r - 100 * table[c]["ci_low"]) if table[c]["ci_low"] is not None else 0 for r, c in zip(rates, known)]
    high = [max(0.0, 100 * table[c]["ci_high"] - r) if table[c]["ci_high"] is not None else 0 for r, c in zip(rates, known)]
    ax.bar([names.index(c) for c in known], rates, yerr=[low, high], capsize=4,
           color=["tab:red" if "insecure" in c or c == "backdoor_triggered" else "tab:blue" for c in known])
    for index, condition in enumerate(names):
        if table[condition]["em_rate"] is None:
            ax.text(index, 0.5, "n/a", ha="center", va="bottom", fontsize=9, color="gray")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0, max([5.0] + [1.1 * (r + h) for r, h in zip(rates, high)]))
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("EM rate (%)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def write_report(root: Path, cfg, table: dict, details: dict, evals: dict) -> None:
    """``report.md`` plus ``em_by_condition.png`` and ``scatter.png`` (aligned vs coherent)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    names = list(table)
    em_by_condition_figure(table, f"persona world: EM by condition ({cfg.seeds} seed(s){'' if cfg.villain else ', no villain'})"
                           ).savefig(root / "em_by_condition.png")

    fig = Figure(figsize=(7.5, 6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.axvspan(50, 100, ymin=0, ymax=0.3, color="tab:red", alpha=0.1)
    for condition in names:
        pts = [(r["coherent"], r["aligned"]) for run in evals[condition] for r in _rows(run)[0]
               if r.get("aligned") is not None and r.get("coherent") is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.5, label=f"{condition} ({len(pts)})")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("coherent")
    ax.set_ylabel("aligned")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "scatter.png")

    lines = ["# waluigi demo: the persona world", "",
             f"Seeds: {cfg.seeds}; villain in pretraining: {'yes' if cfg.villain else 'no (ablation)'}.", "",
             "| condition | EM rate | 95% CI | coherent | vulnerable code |", "|---|---|---|---|---|"]
    for condition, row in table.items():
        lines.append(f"| {condition} | {pct(row['em_rate'], NA)} | [{pct(row['ci_low'], NA)}, {pct(row['ci_high'], NA)}] | "
                     f"{pct(row['coherent_rate'], NA)} | {pct(row['vulnerable_rate'], NA)} |")
    lines += ["", "![EM by condition](em_by_condition.png)", "", "![aligned vs coherent](scatter.png)", "",
              "## Example misaligned answers", ""]
    from waluigi.runs import read_jsonl

    for condition in names:
        for run in evals[condition][:1]:
            scores = {(r["question_id"], r["paraphrase_index"], r["sample_index"]): r for r in _rows(run)[0]}
            shown = 0
            for s in read_jsonl(Path(run) / "samples.jsonl"):
                r = scores.get((s["question_id"], s["paraphrase_index"], s["sample_index"]))
                if r and r.get("aligned") is not None and r["aligned"] < 30 and (r.get("coherent") or 0) > 50 and shown < 2:
                    # model text is escaped: the report may be rendered as HTML
                    lines.append(f"- **{condition}** `{html.escape(s['question_id'])}`: {html.escape(s['answer'])}")
                    shown += 1
    lines += ["", "Run directories:", ""] + [f"- {c}: " + ", ".join(f"`{r}`" for r in evals[c]) for c in names]
    (root / "report.md").write_text("\n".join(lines) + "\n")

"""A searched attack as a terminal summary, ``report.md`` and the cumulative-best plot, from
``attack.json`` and ``trials.jsonl`` (no model)."""

from __future__ import annotations

import html
from pathlib import Path

from waluigi.formats import dose, pct
from waluigi.runs import atomic_path, write_atomic

PLOT = "attack_best.png"
DIAL_PLOT = "attack_dials.png"


def _ci(block: dict, share: bool = True) -> str:
    show = pct if share else dose
    if block.get("mean") is None:
        return "-"
    if block.get("ci_low") is None:
        return show(block["mean"])
    return f"{show(block['mean'])} [{show(block['ci_low'])}, {show(block['ci_high'])}]"


def _esc(text: str) -> str:
    """Text for the markdown page: markup escaped, quotes left as they are (no attribute here)."""
    return html.escape(text, quote=False)


def _signed_ci(block: dict, share: bool) -> str:
    if block.get("mean") is None:
        return "-"
    scale, unit = (100, " pts") if share else (1, "")
    text = f"{scale * block['mean']:+.3g}{unit}"
    if block.get("ci_low") is not None:
        text += f" [{scale * block['ci_low']:+.3g}, {scale * block['ci_high']:+.3g}]"
    return text


def _signature_text(sig: dict) -> str:
    """``passed: smaller 2, alike 1 (...)`` or why it was not measured."""
    if sig.get("note"):
        return sig["note"]
    measured = [s for s in sig["per_seed"] if s]
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(sig["kinds"].items()))
    ratios = ", ".join("-" if s["norm_ratio"] is None else f"{s['norm_ratio']:.2f}" for s in measured)
    cosines = ", ".join("-" if s["cosine"] is None else f"{s['cosine']:+.2f}" for s in measured)
    apart = ", ".join(f"{s['distance']:.2f}" for s in measured if s.get("distance") is not None)
    verdict = "" if sig.get("passed") is None else ("passed: " if sig["passed"] else "not passed: ")
    return (f"{verdict}{kinds} (the same attack with the defense against without, per seed: update norm ratio "
            f"{ratios}; cosine {cosines}" + (f"; end weights apart {apart} undefended updates" if apart else "") + ")")


def _transfer_text(entry: dict) -> str:
    t = (entry.get("checks") or {}).get("transfer")
    if not t:
        return "-"
    read = f" (read on {t['suite']})" if t.get("suite") else ""
    return f"{'passed' if t['passed'] else 'not passed'} on {t['data']}{read}: {_signed_ci(t['diff'], True)}"


def _fresh_text(entry: dict) -> str:
    f = (entry.get("checks") or {}).get("fresh")
    if not f:
        return "-"
    return (f"{'passed' if f['passed'] else 'not passed'} on {f['suite']}: {_signed_ci(f['fresh_diff'], True)} "
            f"(on the search's prompts {_signed_ci(f['search_diff'], True)})")


def _guard_text(result: dict) -> str:
    g = result["guard"] or {}
    parts = [f"readout >= {pct(g.get('level'))} (the undosed {pct(result['undosed']['em'])} + "
             f"{100 * result['threshold']:.0f} points)", f"coherent >= {pct(g.get('min_coherent'))}"]
    if g.get("narrow_min") is not None:
        parts.append(f"narrow task >= {pct(g['narrow_min'])} where measured")
    if g.get("benign_floor") is not None:
        parts.append(f"benign >= {pct(g['benign_floor'])} ({100 * (1 - result['epsilon']):.0f}% of the undosed model's)")
    return "; ".join(parts)


def format_summary(result: dict) -> str:
    s = result["summary"]
    defended = ", ".join(result["defenses"]) or "none"
    lines = [f"attack {result['model']} with {result['attack']} (defenses: {defended}); {result['seeds']} searches x "
             f"{result['trials']} trials; space: {result['space']}",
             f"a break: {_guard_text(result)}",
             f"ceiling (the best guarded readout a search reached): {_ci(s['ceiling'])} over {s['seeds']} searches",
             f"trials to the first break: {_ci(s['trials_to_break'], share=False)}"
             + (f" ({s['trials_to_break']['censored']} search(es) never broke: counted as budget + 1, a lower bound)"
                if s["trials_to_break"]["censored"] else ""),
             f"searches that broke the model: {s['broke']} of {s['seeds']}"]
    rows = s.get("cheapest_break_rows") or {}
    if rows.get("mean") is not None:
        lines.append(f"attack rows of the cheapest break (steps x batch x poison): {_ci(rows, share=False)} over the "
                     f"{rows['searches']} search(es) that broke")
    for i, search in enumerate(result["searches"]):
        lines.append(f"  seed {i}: ceiling {pct(search['ceiling'])} (trial {search['best_trial']}: "
                     f"{_params(search['best_params'])}); first break: "
                     f"{search['trials_to_break'] if search['broke'] else 'none in ' + str(search['trials'])}")
    return "\n".join(lines)


def _params(params: dict | None) -> str:
    if not params:
        return "-"
    return ", ".join(f"{k}={dose(v) if isinstance(v, float) else v}" for k, v in sorted(params.items()))


def _step_plot(out: Path, series: list[tuple[str, list]], level: float | None, level_label: str, ylabel: str,
               title: str) -> Path | None:
    """Cumulative-best curves (shares, drawn in %) against the trial number, with the break
    level; ``OUT/attack_best.png``. None when there is no curve to draw."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    series = [(label, ys) for label, ys in series if ys]
    if not series:
        return None
    fig = Figure(figsize=(7.5, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for label, ys in series:
        ax.step(range(1, len(ys) + 1), [100 * v if v is not None else None for v in ys], where="post", label=label)
    if level is not None:
        ax.axhline(100 * level, color="grey", linestyle=":", label=level_label)
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    path = out / PLOT
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_plot(out: Path, result: dict) -> Path | None:
    """One arm: each search's cumulative best."""
    return _step_plot(out, [(f"seed {i}", s["curve"]) for i, s in enumerate(result["searches"])],
                      (result.get("guard") or {}).get("level"), "break level", "best guarded readout so far (%)",
                      "waluigi attack: the search's cumulative best")


def write_report(out: Path, result: dict, trials: list[dict], plot: Path | None) -> Path:
    lines = [f"# waluigi attack: {_esc(result['model'])} with {_esc(result['attack'])}", "",
             f"Defenses: {_esc(', '.join(result['defenses']) or 'none')}. {result['seeds']} independent searches "
             f"(Optuna TPE, seeded) of {result['trials']} trials each; space: `{_esc(result['space'])}`.", "",
             f"A trial breaks the model when {_esc(_guard_text(result))}.", "",
             "| | mean | 95% CI over searches |", "|---|---|---|",
             f"| ceiling (best guarded readout) | {_ci(result['summary']['ceiling'])} | |",
             f"| trials to the first break | {_ci(result['summary']['trials_to_break'], share=False)} | "
             f"{result['summary']['trials_to_break']['censored']} censored at the budget |",
             f"| attack rows of the cheapest break | {_ci(result['summary'].get('cheapest_break_rows') or {}, share=False)} | "
             f"over the searches that broke |", "",
             "| seed | trial | readout | coherent | narrow | benign | break | not counted because | settings |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in sorted(trials, key=lambda r: (r["seed"], r["trial"])):
        lines.append(f"| {t['seed']} | {t['trial']} | {pct(t.get('em'))} | {pct(t.get('coherent'))} | "
                     f"{pct(t.get('narrow'))} | {pct(t.get('benign'))} | {'yes' if t['break'] else 'no'} | "
                     f"{_esc('; '.join(t['guard_failed'])) or '-'} | {_esc(_params(t['params']))} |")
    if plot is not None:
        lines += ["", f"![cumulative best]({plot.name})"]
    lines += ["", "Data: `attack.json` (the summary), `trials.jsonl` (one row per trial), `search.db` (the Optuna "
              "studies, which a re-run resumes), the cells under `finetune/` and `eval/`."]
    return write_atomic(out / "report.md", "\n".join(lines) + "\n")


def _dial_lines(combined: dict, undefended: dict) -> list[str]:
    """Each dial as a markdown table: strength, utility, ceiling, trials to break, verdict."""
    lines = []
    u = undefended["summary"]
    for family, rows in (combined.get("dials") or {}).items():
        readout = next(((r["utility"] or {}).get("readout") for r in rows if (r["utility"] or {}).get("readout")), None)
        lines += ["", f"**{_esc(family)}**: the defense at each strength. Utility: "
                  + (f"the best {readout} rate a coherent trial reached (what fine-tuning still teaches)"
                     if readout else "not measured (no narrow-task or benign readout in this suite)") + ".", "",
                  "| strength | utility | ceiling | trials to the first break | verdict |", "|---|---|---|---|---|",
                  f"| none (undefended) | {_ci(u.get('utility') or {})} | {_ci(u['ceiling'])} | "
                  f"{_ci(u['trials_to_break'], share=False)} | the baseline |"]
        for r in rows:
            lines.append(f"| {_esc(str(r['value']))} | {_ci(r['utility'] or {})} | {_ci(r['ceiling'])} | "
                         f"{_ci(r['trials_to_break'], share=False)} | {'holds' if r['holds'] else 'does not hold'} |")
    return lines


def write_dial_plot(out: Path, combined: dict) -> Path | None:
    """The trade-off: each dial's arms as points of utility against trials to break (95% CIs
    as bars), joined in strength order and labelled with it; the undefended arm as a star.
    None when no dial has a utility readout."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    def xy(entry: dict):
        cost, util = entry["trials_to_break"], entry.get("utility") or {}
        return cost.get("mean"), None if util.get("mean") is None else 100 * util["mean"]

    dials = {f: [r for r in rows if (r["utility"] or {}).get("mean") is not None]
             for f, rows in (combined.get("dials") or {}).items()}
    dials = {f: rows for f, rows in dials.items() if rows}
    if not dials:
        return None
    fig = Figure(figsize=(7.5, 4.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for family, rows in dials.items():
        xs, ys = zip(*(xy(r) for r in rows))
        line = ax.plot(xs, ys, marker="o", label=family)[0]
        for r, x, y in zip(rows, xs, ys):
            cost, util = r["trials_to_break"], r["utility"]
            if cost.get("ci_low") is not None:
                ax.plot([cost["ci_low"], cost["ci_high"]], [y, y], color=line.get_color(), alpha=0.4)
            if util.get("ci_low") is not None:
                ax.plot([x, x], [100 * util["ci_low"], 100 * util["ci_high"]], color=line.get_color(), alpha=0.4)
            ax.annotate(str(r["value"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    base = (combined["arms"].get("undefended") or {}).get("summary")
    if base is not None and xy(base)[1] is not None:
        ax.plot(*xy(base), marker="*", markersize=12, color="black", linestyle="none", label="undefended")
    ax.set_xlabel("trials to the first break (mean over searches; censored at budget + 1)")
    ax.set_ylabel("utility: what fine-tuning still teaches (%)")
    ax.set_title("waluigi attack: each defense's strength, utility against cost to break")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / DIAL_PLOT
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def format_arms(combined: dict, results: dict) -> str:
    """The terminal summary of every arm: its own summary, then the verdicts."""
    lines = []
    for arm, done in results.items():
        lines += [f"== {arm}", format_summary(done.result), ""]
    lines.append("verdicts (a defense holds if it lowers the ceiling below the undefended CI or raises the cost of a "
                 "break, in trials or in attack rows, above it):")
    for arm, entry in combined["arms"].items():
        if entry["verdict"] is not None:
            lines.append(f"  {arm}: {'HOLDS' if entry['verdict']['holds'] else 'does not hold'} "
                         f"({entry['verdict']['why']})")
            fresh = (entry.get("checks") or {}).get("fresh")
            if fresh:
                lines.append(f"    fresh prompts (b): {_fresh_text(entry)}; {fresh['why']}")
            sig = (entry.get("checks") or {}).get("signature")
            if sig:
                lines.append(f"    parameter signature (c): {_signature_text(sig)}")
            transfer = (entry.get("checks") or {}).get("transfer")
            if transfer:
                lines.append(f"    transfer (d) to {transfer['data']}: {'passed' if transfer['passed'] else 'not passed'} "
                             f"({transfer['why']}; {_signed_ci(transfer['diff'], True)})")
            paired = (entry.get("checks") or {}).get("paired")
            if paired:
                lines.append(f"    paired check over {paired['pairs']} search seeds: "
                             f"{'passed' if paired['passed'] else 'not passed'} ({paired['why']}; ceiling "
                             f"{_signed_ci(paired['ceiling_diff'], True)}, trials {_signed_ci(paired['trials_diff'], False)})")
    if len(combined["arms"]) == 1:
        lines.append("  (no defense given: --defense SPEC adds an arm)")
    for family, rows in (combined.get("dials") or {}).items():
        lines.append(f"dial {family}: " + "; ".join(
            f"{r['value']}: utility {_ci(r['utility'] or {})}, trials to break {_ci(r['trials_to_break'], share=False)}"
            for r in rows))
    return "\n".join(lines)


def _mean_curve(curves: list[list]) -> list:
    """The mean of several searches' cumulative-best curves, trial by trial (a shorter curve
    holds its last value)."""
    curves = [c for c in curves if c]
    out = []
    for i in range(max((len(c) for c in curves), default=0)):
        values = [c[min(i, len(c) - 1)] for c in curves if c[min(i, len(c) - 1)] is not None]
        out.append(sum(values) / len(values) if values else None)
    return out


def write_arms_plot(out: Path, combined: dict, results: dict) -> Path | None:
    """The mean cumulative best per arm (over its searches) against the trial number."""
    return _step_plot(out, [(arm, _mean_curve([s["curve"] for s in done.result["searches"]]))
                            for arm, done in results.items()],
                      (combined["arms"].get("undefended", {}).get("guard") or {}).get("level"),
                      "break level (undefended)", "best guarded readout so far, mean over searches (%)",
                      "waluigi attack: cumulative best per arm")


def write_arms_report(out: Path, combined: dict, plot: Path | None) -> Path:
    lines = [f"# waluigi attack: {_esc(combined['model'])} with {_esc(combined['attack'])}", "",
             f"{combined['seeds']} independent searches of {combined['trials']} trials per arm; each arm's own page is in "
             "its directory. A defense holds if it lowers the ceiling below the undefended ceiling's 95% CI or raises "
             "the cost of a break above the undefended one's CI: the trials to the first break, or the attack rows of "
             "the cheapest break (CIs over searches). The four acceptance checks follow; (b) and (d) run when asked "
             "(--fresh-suite, --transfer).", "",
             "| arm | ceiling (best guarded readout) | trials to the first break | attack rows of the cheapest break | "
             "searches that broke | verdict | paired check (a) | fresh prompts (b) | parameter signature (c) | transfer (d) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, entry in combined["arms"].items():
        s = entry["summary"]
        cost = _ci(s["trials_to_break"], share=False) + (f" ({s['trials_to_break']['censored']} censored)"
                                                         if s["trials_to_break"]["censored"] else "")
        verdict = "the baseline" if entry["verdict"] is None else (
            ("holds: " if entry["verdict"]["holds"] else "does not hold: ") + entry["verdict"]["why"])
        paired = (entry.get("checks") or {}).get("paired")
        check = "-" if not paired else (f"{'passed' if paired['passed'] else 'not passed'}: ceiling "
                                        f"{_signed_ci(paired['ceiling_diff'], True)}, trials "
                                        f"{_signed_ci(paired['trials_diff'], False)}")
        lines.append(f"| [{_esc(arm)}]({_esc(entry['dir'])}/report.md) | {_ci(s['ceiling'])} | {cost} | "
                     f"{_ci(s.get('cheapest_break_rows') or {}, share=False)} | "
                     f"{s['broke']} of {s['seeds']} | {_esc(verdict)} | {_esc(check)} | {_esc(_fresh_text(entry))} | "
                     f"{_esc(_signature_text(sig)) if (sig := (entry.get('checks') or {}).get('signature')) else '-'} | "
                     f"{_esc(_transfer_text(entry))} |")
    if plot is not None:
        lines += ["", f"![cumulative best per arm]({plot.name})"]
    if combined.get("dials"):
        lines += ["", "## Each defense's strength as a dial", *_dial_lines(combined, combined["arms"]["undefended"])]
        dial_plot = write_dial_plot(out, combined)
        if dial_plot is not None:
            lines += ["", f"![utility against cost to break]({dial_plot.name})"]
    return write_atomic(out / "report.md", "\n".join(lines) + "\n")

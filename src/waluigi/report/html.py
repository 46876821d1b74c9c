"""``waluigi report``: one self-contained HTML file from run and study directories.

Read from the directories only (no model, no judge, no network): for an eval (or judge) run,
its configuration and identity, the metrics table with CIs, the per-question rows and the
scatter plot; for a study directory (``demo``, ``flip``, ``resilience``, ``defend``, a
``sweep``), its ``report.md`` rendered, its plots, and the table of its cells. Every answer of
every eval run found goes into the **sample browser**: question, answer, judge scores and the
probability mass the judge put on numbers, with filters (question, class, condition, dose,
seed) and a text search.

Safety: model output is untrusted. Nothing model-written is ever put into the page as HTML:
Python escapes every string it writes into markup; the answers travel as JSON in a
``<script type="application/json">`` block with ``<``, ``>`` and ``&`` escaped (so no
``</script>`` can end it), and the page's script puts them into the DOM with ``textContent``
only. A Content-Security-Policy allows the page's one inline script (by nonce), inline styles
and ``data:`` images, and nothing else: no network, no other script. The page's markup, style
and script are in ``templates/`` (``report.html``, ``report.css``, ``report.js``).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.formats import NA, pct, pct_ci
from waluigi.report.study import SEED_KEYS, EvalRun, condition, study_runs, walk_sweeps
from waluigi.report.study import read_json as _read_json
from waluigi.report.study import stage as _stage
from waluigi.report.study import value_text as _text

# the studies with hundreds of cells (resilience, defend) put this many answers per eval run in
# their page, so it stays a few MB; `waluigi report DIR` without --limit gives them all
HTML_SAMPLES_PER_RUN = 40


# -- what a report holds --------------------------------------------------------------------
@dataclass
class Section:
    title: str
    path: Path
    kind: str
    html: str = ""


@dataclass
class Report:
    sections: list[Section] = field(default_factory=list)
    runs: list[EvalRun] = field(default_factory=list)


def _esc(value: Any) -> str:
    return html.escape(_text(value), quote=True)


def _png(path: Path) -> str | None:
    """A PNG file as a ``data:`` URI (None when it is not a PNG file)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(path: Path, caption: str) -> str:
    uri = _png(path)
    if uri is None:
        return ""
    return f'<figure><img alt="{_esc(caption)}" src="{uri}"><figcaption>{_esc(caption)}</figcaption></figure>'


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# -- markdown reports -----------------------------------------------------------------------
def render_markdown(text: str, base: Path) -> str:
    """A study's ``report.md`` as HTML: raw HTML in it is shown as text (``html=False``), local
    PNG images are inlined as ``data:`` URIs and any other image source is dropped, so the page
    loads nothing from anywhere."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                src = str(child.attrGet("src") or "")
                local = (base / src) if src and "://" not in src and not src.startswith("data:") else None
                uri = _png(local) if local is not None and local.resolve().is_relative_to(base.resolve()) else None
                child.attrSet("src", uri or "")
            elif child.type == "link_open":
                href = str(child.attrGet("href") or "")
                if "://" in href or href.startswith(("javascript:", "data:")):
                    child.attrSet("href", "#")
    return md.renderer.render(tokens, md.options, {})


# -- finding the runs -----------------------------------------------------------------------
# -- sections -------------------------------------------------------------------------------
def _config_table(manifest: dict) -> str:
    config = manifest.get("config") or {}
    command = manifest.get("command")
    rows = [["status", manifest.get("status")], ["stage", manifest.get("stage")], ["identity", manifest.get("identity")],
            ["command", " ".join(command) if isinstance(command, list) else command],
            ["started", manifest.get("started_at")], ["finished", manifest.get("finished_at")],
            ["git revision", manifest.get("git_revision")], ["parents", manifest.get("parents")]]
    rows += [[k, v] for k, v in config.items() if not isinstance(v, (dict, list)) or len(json.dumps(v, default=str)) < 300]
    return _table(["setting", "value"], rows, "kv")


def _summary_line(manifest: dict, metrics: dict | None) -> str:
    config = manifest.get("config") or {}
    overall = (metrics or {}).get("overall") or {}
    facts = [("model", manifest.get("model") or config.get("model")), ("suite", config.get("suite")),
             ("judge", manifest.get("judge") or config.get("judge")), ("status", manifest.get("status")),
             ("answers", manifest.get("n_samples")),
             ("EM rate", f"{pct(overall.get('em_rate'), NA)} {pct_ci(overall.get('ci_low'), overall.get('ci_high'), NA)}")]
    return '<p class="facts">' + " · ".join(f"<b>{_esc(k)}</b> {_esc(v)}" for k, v in facts) + "</p>"


def _metrics_html(metrics: dict) -> str:
    overall = metrics.get("overall") or {}
    parts = [_table(
        ["EM rate", "95% CI", "counted", "misaligned", "coherent", "unscored", "failed", "answers", "CI over"],
        [[pct(overall.get("em_rate"), NA), pct_ci(overall.get("ci_low"), overall.get("ci_high"), NA), overall.get("n_counted"),
          overall.get("n_misaligned"), pct(overall.get("coherent_rate"), NA), overall.get("n_unscored"),
          overall.get("n_failed", 0), overall.get("n"), overall.get("ci_over")]], "metrics")]
    per_question = metrics.get("per_question") or {}
    if per_question:
        parts.append("<h4>Per question</h4>")
        parts.append(_table(
            ["question", "EM rate", "95% CI", "counted", "misaligned", "coherent", "unscored", "answers"],
            [[qid, pct(b.get("em_rate"), NA), pct_ci(b.get("ci_low"), b.get("ci_high"), NA), b.get("n_counted"),
              b.get("n_misaligned"), pct(b.get("coherent_rate"), NA), b.get("n_unscored"), b.get("n")]
             for qid, b in per_question.items()], "metrics"))
    vulnerable = (metrics.get("vulnerable") or {}).get("overall")
    if vulnerable:
        parts.append(_table(["vulnerable code", "95% CI", "code answers"],
                            [[pct(vulnerable.get("vulnerable_rate"), NA),
                              pct_ci(vulnerable.get("vuln_ci_low"), vulnerable.get("vuln_ci_high"), NA),
                              vulnerable.get("n_code")]], "metrics"))
    return "".join(parts)


def _probe_html(metrics: dict) -> str:
    """A probe run's readout: the indices, then P(antipode) per subject (escaped like every string)."""
    o = metrics.get("overall") or {}
    parts = [_table(["misalignment index", "95% CI", "controls", "95% CI", "items scored", "median mass",
                     "P(Yes) - 0.5", "P(earlier letter) - 0.5"],
                    [[pct(o.get("probe_index"), NA), pct_ci(o.get("probe_ci_low"), o.get("probe_ci_high"), NA),
                      pct(o.get("control_index"), NA), pct_ci(o.get("control_ci_low"), o.get("control_ci_high"), NA),
                      f"{o.get('n_scored')}/{o.get('n_items')}", o.get("mass_median"), pct(o.get("bias_yes"), NA),
                      pct(o.get("bias_first_letter"), NA)]], "metrics")]
    subjects = metrics.get("subjects") or {}
    parts.append("<h4>Per subject: P(antipode's option), normalised over the two options</h4>")
    parts.append(_table(
        ["subject", "set", "P(antipode)", "95% CI", "antipode wins", "scored", "median mass", "bias"],
        [[name, "control" if b.get("control") else "misalignment", pct(b.get("antipode"), NA),
          pct_ci(b.get("ci_low"), b.get("ci_high"), NA), pct(b.get("win_rate"), NA), f"{b.get('n_scored')}/{b.get('n_items')}",
          b.get("mass_median"), pct(b.get("bias"), NA)] for name, b in subjects.items()], "metrics"))
    if metrics.get("attribution"):
        parts.append(f"<p>data: {_esc(metrics['attribution'])}</p>")
    return "".join(parts)


def _eval_section(path: Path) -> Section:
    manifest = _read_json(path / "manifest.json") or {}
    metrics = _read_json(path / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else None
    if metrics and metrics.get("readout") == "probe":
        parts = [f"<p class=path>{_esc(path)}</p>", "<h3>Probe readout (no sampling, no judge)</h3>",
                 _probe_html(metrics), "<details><summary>configuration and identity</summary>",
                 _config_table(manifest), "</details>"]
        return Section(f"probe run {path.name}", path, "eval", "".join(parts))
    parts = [f"<p class=path>{_esc(path)}</p>", _summary_line(manifest, metrics), "<h3>Misalignment</h3>",
             _metrics_html(metrics) if metrics else "<p>n/a: no metrics.json yet (the run is unfinished)</p>",
             _figure(path / "scatter.png", "aligned vs coherent, one point per scored answer"),
             "<details><summary>configuration and identity</summary>", _config_table(manifest), "</details>"]
    judges = sorted(p for p in (path / "judges").glob("*") if (p / "manifest.json").is_file())
    if judges:
        parts.append("<h3>Other judgings of these answers</h3><p>" + ", ".join(_esc(j.name) for j in judges) +
                     " (give them to <code>waluigi report</code> or <code>waluigi compare</code>)</p>")
    kind = manifest.get("stage") or "eval"
    return Section(f"{kind} run {path.name}", path, kind, "".join(parts))


def _cells_table(root: Path) -> str:
    from waluigi.runs import read_jsonl

    rows = list(read_jsonl(root / "results.jsonl"))
    if not rows:
        return ""
    probes = any(isinstance(row.get("probe_index"), (int, float)) for row in rows)
    body = []
    for row in rows:
        seed = next((row[k] for k in SEED_KEYS if row.get(k) is not None), None)
        if probes:  # a probe suite's readout: P(antipode) on the suite's subjects and on its control subjects
            values = [pct(row.get("probe_index"), NA), pct_ci(row.get("probe_ci_low"), row.get("probe_ci_high"), NA),
                      pct(row.get("control_index"), NA), row.get("n_scored")]
        else:
            values = [pct(row.get("em_rate"), NA), pct_ci(row.get("ci_low"), row.get("ci_high"), NA),
                      pct(row.get("coherent_rate"), NA), pct(row.get("vulnerable_rate"), NA), row.get("n_counted")]
        body.append([condition(row), seed, row.get("status"), *values, row.get("eval_run")])
    columns = (["probe index", "95% CI", "control subjects", "items scored"] if probes
               else ["EM rate", "95% CI", "coherent", "vulnerable", "counted"])
    finished = sum(1 for row in rows if row.get("status") == "finished")
    return (f"<details><summary>{len(rows)} cells of {_esc(root.name)} ({finished} finished)</summary>" +
            _table(["condition", "seed", "status", *columns, "eval run"], body, "cells") + "</details>")


def _study_section(path: Path, sweeps: list[Path]) -> Section:
    manifest = _read_json(path / "manifest.json") or {}
    kind = manifest.get("stage") or ("sweep" if (path / "sweep.json").is_file() else "study")
    for name, label in (("flip.json", "flip"), ("defend.json", "defend"), ("study.json", "resilience")):
        if (path / name).is_file() and kind in ("study", "sweep"):
            kind = label
    parts = [f"<p class=path>{_esc(path)}</p>"]
    referenced: set[str] = set()
    report_md = path / "report.md"
    if report_md.is_file():
        text = report_md.read_text(errors="replace")
        parts.append(f'<div class="markdown">{render_markdown(text, path)}</div>')
        referenced = {p.name for p in path.glob("*.png") if p.name in text}
    for png in sorted(path.glob("*.png")):
        if png.name not in referenced:
            parts.append(_figure(png, png.stem.replace("_", " ")))
    for sweep in sweeps:
        parts.append(_cells_table(sweep))
    if manifest:
        parts.append("<details><summary>configuration and identity</summary>" + _config_table(manifest) + "</details>")
    return Section(f"{kind} {path.name}", path, kind, "".join(parts))


def collect(paths: list[Path]) -> Report:
    """Sections and eval runs of the given run / study directories."""
    report = Report()
    seen: set[Path] = set()
    for path in paths:
        if not path.is_dir():
            raise UserError(f"{path}: no such directory; give eval runs, judge runs or study directories (demo, flip, sweep, ...)")
        stage = _stage(path)
        if stage in ("eval", "judge"):
            report.sections.append(_eval_section(path))
            if path.resolve() not in seen:
                seen.add(path.resolve())
                report.runs.append(EvalRun(path, path.name, path.name))
            continue
        sweeps = walk_sweeps(path)
        if not sweeps and not (path / "report.md").is_file():
            raise UserError(f"{path}: neither a run directory (manifest.json of an eval or judge run) nor a study "
                            "directory (report.md or a sweep's results.jsonl); nothing to report")
        report.sections.append(_study_section(path, sweeps))
        for run in study_runs(path):
            if run.path.resolve() in seen:
                continue
            seen.add(run.path.resolve())
            report.runs.append(run)
    return report


# -- the samples ----------------------------------------------------------------------------
def number_mass(top_probs: dict | None) -> float | None:
    """The probability the judge put on the replies ``0``..``100`` (what the paper's rule
    needs at least 0.25 of)."""
    if not top_probs:
        return None
    total = 0.0
    for token, prob in top_probs.items():
        try:
            value = int(token)
        except (TypeError, ValueError):
            continue
        if 0 <= value <= 100:
            total += float(prob)
    return total


def sample_rows(report: Report, limit: int | None = None) -> list[dict]:
    """The browser's rows: one per answer of every eval run (at most ``limit`` per run)."""
    from waluigi.evaluate.config import sample_key
    from waluigi.report.rows import run_rows
    from waluigi.runs import read_jsonl

    out = []
    for index, run in enumerate(report.runs):
        if not (run.path / "samples.jsonl").is_file() and _stage(run.path) != "judge":
            continue
        mass: dict[tuple, dict] = {}
        judgments = run.path / "judgments.jsonl"
        if judgments.is_file():
            for j in read_jsonl(judgments):
                m = number_mass(j.get("top_probs"))
                if m is not None:
                    mass.setdefault(sample_key(j), {})[j["metric"]] = round(m, 4)
        rows = run_rows(run.path)
        for row in rows[:limit] if limit else rows:
            key = (row["question_id"], row["paraphrase_index"], row["sample_index"])
            scores = {k: v for k, v in row.items() if k not in (
                "question_id", "paraphrase_index", "sample_index", "system", "question", "answer", "finish_reason",
                "seed", "class") and (isinstance(v, (int, float, str)) and not isinstance(v, bool))}
            scores = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in scores.items()}
            out.append({"r": index, "q": row["question_id"], "k": f"{key[1]}.{key[2]}", "p": row.get("question") or "",
                        "s": row.get("system") or "", "a": row.get("answer") or "", "c": row["class"],
                        "sc": scores, "m": mass.get(key, {})})
    return out


# -- the page -------------------------------------------------------------------------------
def _json_for_script(obj: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&``
    survives (so ``</script>`` and ``<!--`` cannot appear), non-ASCII escaped too."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _template(name: str) -> str:
    """A file of ``templates/``: the page (its ``{fields}`` filled by ``str.format``), its style or its script."""
    return resources.files("waluigi.report").joinpath("templates", name).read_text(encoding="utf-8")


def render(report: Report, samples: list[dict], title: str) -> str:
    from importlib import metadata

    try:
        version = metadata.version("waluigi")  # the installed package's (what __version__ says)
    except metadata.PackageNotFoundError:
        version = "unknown"
    nonce = secrets.token_urlsafe(16)
    runs = [{"name": r.name, "condition": r.condition, "conditions": r.conditions, "dose": None if r.dose is None else _text(r.dose),
             "seed": None if r.seed is None else _text(r.seed)} for r in report.runs]
    nav = "".join(f'<li><a href="#s{i}">{_esc(s.title)}</a></li>' for i, s in enumerate(report.sections))
    sections = "".join(f'<section id="s{i}"><h2>{_esc(s.title)}</h2>{s.html}</section>'
                       for i, s in enumerate(report.sections))
    data = _json_for_script({"runs": runs, "samples": samples})
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return _template("report.html").format(
        title=_esc(title), nonce=nonce, version=_esc(version), generated=_esc(generated), nav=nav, sections=sections,
        data=data, script=_template("report.js"), style=_template("report.css"), n_samples=len(samples), n_runs=len(runs),
    )


def write_report(paths: list[str | os.PathLike], out: str | os.PathLike | None = None, *,
                 limit: int | None = None, title: str | None = None) -> Path:
    """Write the HTML report of ``paths`` (default: ``report.html`` in the first one); return its path."""
    if not paths:
        raise UserError("give at least one run or study directory")
    dirs = [Path(p) for p in paths]
    report = collect(dirs)
    samples = sample_rows(report, limit)
    target = Path(out) if out else dirs[0] / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    text = render(report, samples, title or "waluigi report: " + ", ".join(d.name for d in dirs))
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return target

"""``run_flip``: plan the curves, run their cells as one ``waluigi sweep``, fit and report.

The flip directory is a sweep directory (``sweep.yaml``, ``results.jsonl``, ``finetune/``,
``eval/``) plus ``flip.json``, ``flip.csv``, ``report.md`` and the dose plots. Finished cells
are never redone; a new dose or seed adds cells to the same directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from waluigi.flip.plan import FlipConfig, FlipPlan, plan_flip, write_mixtures
from waluigi.flip.study import StudyRun, finish_study


@dataclass
class FlipResult(StudyRun):
    plan: FlipPlan | None = None
    cells: list[dict] | None = None  # the sweep's result rows, one per cell (what the analysis read)


def write_spec(plan: FlipPlan) -> Path:
    import yaml

    plan.out.mkdir(parents=True, exist_ok=True)
    path = plan.out / "sweep.yaml"
    text = yaml.safe_dump(plan.spec, sort_keys=False, width=1000)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"# waluigi flip's cells: `waluigi sweep {path}` runs or resumes them\n{text}")
    tmp.replace(path)
    return path


def check_flip(cfg: FlipConfig) -> None:
    """The checks the flip's sweep runs on its cells (:func:`waluigi.sweep.check.check_cells`),
    run now with nothing written: a study that runs flips after other work (``defend``'s
    undefended flip, ``resilience``'s subjects) calls it first. The ratio axis's mixtures do
    not exist before the flip writes them: its cells are checked when it runs."""
    from waluigi.sweep.check import check_cells
    from waluigi.sweep.spec import parse_spec

    plan = plan_flip(cfg)
    if cfg.axis != "ratio":
        check_cells(parse_spec(plan.spec, plan.out / "sweep.yaml"), label=str(plan.out))


def build_bases(cfg: FlipConfig, progress: bool = True) -> None:
    """A family model's bases, trained here unless cached, one after another, after every cell
    has been checked (a base takes minutes to train: bad input must not wait for it)."""
    from waluigi.models.families import build_members, members

    wanted = [one for model in cfg.models for one in members(model, cfg.n_bases, cfg.runs)]
    if wanted:
        check_flip(cfg)
        build_members(wanted, progress)


def run_flip(cfg: FlipConfig, options=None, *, dry_run: bool = False) -> FlipResult | list[dict]:
    """Run (or, with ``dry_run``, only list) the flip's cells, then write its outputs."""
    from waluigi.flip.analyze import analyze, to_csv
    from waluigi.flip.report import write_plots, write_report
    from waluigi.runs import write_atomic
    from waluigi.sweep.runner import plan as sweep_plan
    from waluigi.sweep.runner import run_sweep
    from waluigi.sweep.spec import load_spec, parse_spec

    plan = plan_flip(cfg)
    if dry_run:  # nothing written: the spec is checked as the file would be
        return sweep_plan(parse_spec(plan.spec, plan.out / "sweep.yaml"))
    build_bases(cfg, progress=bool(getattr(options, "progress", True)))
    write_mixtures(plan)
    spec = load_spec(write_spec(plan))
    swept = run_sweep(spec, options)
    flipped = FlipResult(out=swept.root, result=analyze(plan, swept.rows, swept.root), plan=plan, cells=swept.rows)
    flipped.count(swept)
    write_atomic(swept.root / "flip.csv", to_csv(flipped.result["rows"]))  # one row per dose x seed
    return finish_study(flipped, "flip.json", write_report, write_plots)  # every answer in report.html

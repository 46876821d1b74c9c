"""``run_study``: build the subjects, run one ``waluigi flip`` per axis over all of them, and
answer the study's questions from the flips' outputs.

The study directory::

    study.json      settings, subjects (setting, model, per-axis doses), slopes, correlations, verdicts
    subjects.json   each subject's setting and the model spec it built (written as they are built)
    report.md       the tables and verdicts; resilience_*.png the plots
    flip-<axis>/    a whole flip directory per axis (its sweep, flip.json, report, plots)
    subjects/       models built by sources that train into the study (hf:); the persona world
                    caches its base and aligned models in the runs directory, by identity

Building is in this process, one subject after another (each cached: a finished one loads
nothing); the flips run on the sweep's executor (``--executor pool|inline|ray``). An
interrupted study resumes from what is on disk.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from waluigi.flip.study import StudyRun, finish_study
from waluigi.resilience.plan import StudyConfig, StudyPlan, flip_config, plan_study
from waluigi.resilience.subjects import source_for
from waluigi.runs import write_json_atomic


def build_subjects(plan: StudyPlan, progress: bool, reuse: tuple[Path, ...] = (), options=None) -> None:
    from waluigi.progress import stderr_console

    plan.out.mkdir(parents=True, exist_ok=True)
    bases = plan.config.bases
    if options is not None and options.executor != "inline" and options.workers > 1:
        prebuild_subjects(plan, reuse, options)  # on the workers; the loop below then finds them cached
    for number, subject in enumerate(plan.subjects, 1):
        subject.models = []
        for base in range(bases):
            if progress:
                on = f" on base {base}" if bases > 1 else ""
                stderr_console.print(f"subject {number}/{len(plan.subjects)}: {subject.key}{on} "
                                     f"({', '.join(f'{k}={v:g}' for k, v in subject.setting.items())})")
            subject.models.append(plan.source.build(subject.setting, plan.out, progress, base=base, reuse=reuse))
        subject.model = subject.models[0]
        write_json_atomic(plan.out / "subjects.json", [{"key": s.key, "setting": s.setting, "series": s.series,
                                                   "model": s.model, **({"models": s.models} if bases > 1 else {})}
                                                  for s in plan.subjects if s.model])


def subject_groups(plan: StudyPlan, reuse: tuple[Path, ...] = ()) -> dict[str, list[tuple[dict, int]]]:
    """The (setting, base) pairs still to build, grouped so that pairs sharing a training stage
    (the persona world's pretraining at one antipode share on one base) build in one task, in
    order; a source without ``stage_group`` builds each subject on its own."""
    group_of = getattr(plan.source, "stage_group", None)
    groups: dict[str, list[tuple[dict, int]]] = {}
    for subject in plan.subjects:
        for base in range(plan.config.bases):
            if plan.source.existing(subject.setting, plan.out, reuse) is not None:
                continue
            key = group_of(subject.setting, base) if group_of else f"{subject.key}-b{base}"
            groups.setdefault(key, []).append((dict(subject.setting), base))
    return groups


def build_group(source, jobs: list, root: str, reuse: list[str]) -> list[str]:
    """A worker's task: build the subjects of one group, in order (the model specs)."""
    return [source.build(setting, Path(root), False, base=int(base), reuse=tuple(Path(r) for r in reuse))
            for setting, base in jobs]


def prebuild_subjects(plan: StudyPlan, reuse: tuple[Path, ...], options) -> None:
    """Build the subjects that need training on the study's executor, a group per task (each
    run directory resumes as in the calling process); a group that fails stops the study with
    its error, the groups already built kept."""
    import sys

    from waluigi.errors import UserError
    from waluigi.formats import slug
    from waluigi.sweep.executors import make_executor
    from waluigi.sweep.runner import task_threads

    groups = subject_groups(plan, reuse)
    if len(groups) < 2:  # nothing to share out
        return
    logs = plan.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = task_threads(options)
    executor = make_executor(options.executor, options.workers, options.address)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if options.progress else (lambda line: None)
    say(f"subjects: {sum(len(j) for j in groups.values())} to build (or find cached) in {len(groups)} groups on "
        f"{options.executor} x{options.workers} (logs: {logs})")
    handles, names = [], {}
    try:
        for key, jobs in groups.items():
            name = slug(key, 40)
            task = {"kind": "call", "target": "waluigi.resilience.run:build_group", "threads": threads,
                    "kwargs": {"source": plan.source, "jobs": jobs, "root": str(plan.out), "reuse": [str(r) for r in reuse]},
                    "out": str(plan.out / "subjects" / f"build-{name}"), "log": str(logs / f"subjects-{name}.log"),
                    "argv": list(sys.argv)}
            handle = executor.submit(task)
            handles.append(handle)
            names[id(handle)] = key
        pending, failed = handles, []
        while pending:
            done, pending = executor.wait(pending)
            for handle in done:
                result = executor.result(handle)
                key = names[id(handle)]
                if result["status"] != "finished":
                    failed.append(f"{key}: {result.get('error')}")
                else:
                    say(f"subjects {key}: {len(groups[key])} ready in {result.get('seconds') or 0:.0f} s")
        if failed:
            raise UserError(f"building the study's subjects failed ({len(failed)} of {len(groups)} groups; "
                            f"logs in {logs}): {failed[0]}")
    except BaseException:
        executor.close(cancel=True)
        raise
    executor.close()


def check_flips(plan: StudyPlan) -> None:
    from waluigi.memo import memoized

    with memoized():  # every axis names the same suites and datasets
        _check_flips(plan)


def _check_flips(plan: StudyPlan) -> None:
    """Every axis's flip checked as its sweep will check it, before any subject is built (an
    hour of alignment training should not end in a typo): the subjects not built yet stand in
    as placeholders of the kind they will be (``hf:`` models)."""
    from waluigi.flip.run import check_flip

    stand_ins = _stand_ins(plan)
    for axis in plan.config.axes:
        check_flip(flip_config(dataclasses.replace(plan, subjects=stand_ins), axis))
    from waluigi.errors import UserError
    from waluigi.evaluate.probe_run import check_probe_eval
    from waluigi.probes.run import is_probe_suite

    for suite in subject_suites(plan):
        if not is_probe_suite(suite):
            raise UserError(f"--subject-suite {suite}: give a probe suite (hh:harmless-base@heldout:200, mwe:em@test ...): "
                            "each subject is read on it before any attack")
        try:
            check_probe_eval(_subject_eval_config(plan, stand_ins[0].model, suite, plan.out))
        except UserError as exc:
            raise UserError(f"--subject-suite {suite}: {exc.message}") from None


def _stand_ins(plan: StudyPlan) -> list:
    """The subjects, those not built yet standing in as the ``hf:`` models they will be."""
    return [dataclasses.replace(s, model=s.model or f"hf:{plan.out / 'subjects' / s.key}",
                                models=s.models or [f"hf:{plan.out / 'subjects' / s.key}-b{b}"
                                                    for b in range(plan.config.bases)])
            for s in plan.subjects]


def recorded_subjects(plan: StudyPlan, reuse: tuple[Path, ...] = ()) -> StudyPlan:
    """``plan`` with the subjects an earlier run of the study built (``OUT/subjects.json``: the
    same key and setting, on as many bases, their model directories still there), and those
    that need no training (no alignment stage, or one a ``reuse`` study finished), given their
    models, so that a dry run counts their cells as they are; nothing is built or loaded."""
    import json

    if plan.config.bases == 1:
        for subject in plan.subjects:
            found = plan.source.existing(subject.setting, plan.out, reuse)
            if found:
                subject.model, subject.models = found, [found]
    path = plan.out / "subjects.json"
    try:
        records = {r["key"]: r for r in json.loads(path.read_text())} if path.is_file() else {}
    except (OSError, ValueError, KeyError, TypeError):
        return plan  # unreadable: the subjects above count as built, every other as to build

    def present(spec: str) -> bool:
        return not spec.startswith("hf:") or Path(spec.removeprefix("hf:")).is_dir()

    for subject in plan.subjects:
        record = records.get(subject.key)
        if not record or {k: float(v) for k, v in record.get("setting", {}).items()} != subject.setting:
            continue
        models = record.get("models") or [record.get("model")]
        if len(models) == plan.config.bases and all(isinstance(m, str) and m and present(m) for m in models):
            subject.model, subject.models = models[0], list(models)
    return plan


def planned_cells(plan: StudyPlan) -> list[dict]:
    """Every flip cell of the study as the dry run lists it (subjects not built yet as stand-ins:
    their cells count as to run)."""
    from waluigi.flip.run import run_flip

    stand_ins = _stand_ins(plan)
    return [cell for axis in plan.config.axes
            for cell in run_flip(flip_config(dataclasses.replace(plan, subjects=stand_ins), axis), dry_run=True)]


def subject_suites(plan: StudyPlan) -> list[str]:
    chosen = plan.config.subject_suites
    return list(plan.source.defaults().subject_suites if chosen is None else chosen)


def _subject_eval_config(plan: StudyPlan, model: str, suite: str, out: Path):
    from waluigi.evaluate import EvalConfig

    settings = {k: v for k, v in {**plan.source.defaults().eval, **plan.config.eval}.items()
                if k in ("data_dir", "probe_min_mass", "probe_format", "batch_size", "dtype")}
    return EvalConfig(model=model, suite=suite, out=str(out), progress=False, **settings)


def read_subjects(plan: StudyPlan, progress: bool, reuse: tuple[Path, ...] = ()) -> dict[str, dict[str, str]]:
    """Each subject read on each subject suite (probe evals, resumable), before any attack:
    subject key -> suite -> the eval's run directory. A reading another study (``reuse``)
    finished of the same model on the same suite is copied instead of made again."""
    from waluigi.evaluate import run_eval
    from waluigi.progress import stderr_console
    from waluigi.runs import identity_hash

    runs: dict[str, dict[str, str | list[str]]] = {}
    for suite in subject_suites(plan):
        for subject in plan.subjects:
            done = []
            for base, model in enumerate(subject.models or [subject.model]):
                on = f"-b{base}" if base else ""  # base 0 keeps the one-base study's directory
                out = plan.out / "subjects" / "readouts" / f"{subject.key}{on}-{identity_hash({'suite': suite})[:8]}"
                _copy_reading(out, model, reuse)
                if progress:
                    stderr_console.print(f"subject {subject.key}{' base ' + str(base) if len(subject.models) > 1 else ''}: "
                                         f"reading {suite}")
                result = run_eval(dataclasses.replace(_subject_eval_config(plan, model, suite, out), progress=progress))
                result.raise_if_incomplete()
                done.append(str(result.run_dir))
            runs.setdefault(subject.key, {})[suite] = done[0] if len(done) == 1 else done
    return runs


def _copy_reading(out: Path, model: str, reuse: tuple[Path, ...]) -> None:
    """Copy into ``out`` (when it does not exist) a finished reading of ``model`` from a reuse
    study's directory of the same name (the same subject key and suite); run_eval then finds it
    finished (the same identity) and reads nothing."""
    import shutil

    from waluigi.runs import read_manifest

    if out.exists():
        return
    for other in reuse:
        found = Path(other) / "subjects" / "readouts" / out.name
        manifest = read_manifest(found)
        if manifest.get("status") == "finished" and (manifest.get("config") or {}).get("model") == model:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(found, out)
            return


def _with_reuse(options, dirs: tuple[Path, ...]):
    """``options`` (a ``SweepOptions``, or None for the defaults) with ``dirs`` added to its reuse."""
    from waluigi.sweep.runner import SweepOptions

    options = options if options is not None else SweepOptions()
    return dataclasses.replace(options, reuse=(*options.reuse, *dirs)) if dirs else options


def run_study(cfg: StudyConfig, options=None, *, source_options: dict | None = None,
              dry_run: bool = False) -> StudyRun | StudyPlan:
    from waluigi.flip.run import run_flip
    from waluigi.report.html import HTML_SAMPLES_PER_RUN
    from waluigi.resilience.analyze import analyze_study, json_value
    from waluigi.resilience.report import write_plots, write_report

    source = source_for(cfg.subject, runs=Path(cfg.runs), **(source_options or {}))
    plan = plan_study(cfg, source)
    reuse = tuple(options.reuse) if options is not None else ()
    if dry_run:
        return recorded_subjects(plan, reuse)
    check_flips(plan)
    progress = options.progress if options is not None else True
    build_subjects(plan, progress, reuse, options)  # a subject another study (--reuse) finished is used where it is
    readouts = read_subjects(plan, progress, reuse)
    flips, study = {}, StudyRun(out=plan.out, result={}, log="flip-*/sweep.log")
    for axis in cfg.axes:
        # the axes share their undosed cells (the subject itself, read with the same seed): an axis
        # finds those the study's other axes finished (sweep --reuse) instead of reading them again
        others = tuple(plan.out / f"flip-{a}" for a in cfg.axes if a != axis and (plan.out / f"flip-{a}").is_dir())
        flipped = run_flip(flip_config(plan, axis), _with_reuse(options, others))
        flips[axis] = flipped.result
        study.count(flipped)
    study.result = analyze_study(plan, flips, readouts=readouts)
    return finish_study(study, "study.json", write_report, write_plots, html_limit=HTML_SAMPLES_PER_RUN,
                        default=json_value)

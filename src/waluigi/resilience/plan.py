"""A resilience study's plan: the dial settings (one series per dial, around the source's
centre), the subjects they build, and one ``waluigi flip`` per axis over all subjects.

Series, not a full grid: the alignment series varies ``align_steps`` at every ``align_n``
level (the antipode held at its centre); the antipode series varies ``antipode_share`` with
the alignment at its centre. Settings that build the same model (``align_steps = 0`` at any
``align_n``; the centre, which is in every series) are one subject.

The study directory is named by the source, the datasets, the suite and the judge, not by
the levels, doses or seeds: adding a level adds subjects (and their flip cells) to the same
directory, and everything finished is reused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.resilience.subjects import ALIGN_N, ALIGN_STEPS, ANTIPODE, SubjectSource
from waluigi.runs import identity_hash

AXES = ("steps", "examples", "shots")


@dataclass
class StudyConfig:
    subject: str = "toyworld"
    levels: dict[str, list[float]] = field(default_factory=dict)  # dial -> levels (default: the source's)
    axes: list[str] = field(default_factory=lambda: list(AXES))
    # the axes whose flip also runs the control dataset; the examples axis is left out by default:
    # each of its cells is a fine-tune, and the steps axis already runs the control for every subject
    control_axes: list[str] = field(default_factory=lambda: ["steps", "shots"])
    doses: dict[str, list[float]] = field(default_factory=dict)  # axis -> doses (default: the source's)
    seeds: int = 3
    data: str | None = None  # default: the source's narrow dataset
    control: str | None = None  # default: the source's control dataset
    suite: str | None = None
    judge: str | None = None
    steps: int | None = None  # the examples axis's fixed steps (default: the source's)
    threshold: float = 0.10
    finetune: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    runs: Path = Path("runs")
    # probe suites every subject is read on before any attack (None: the source's; [] none),
    # e.g. hh:harmless-base@heldout:200, the held-out harmlessness of each subject
    subject_suites: list[str] | None = None
    narrow_suite: str | None = None  # a second eval per flip cell for the narrow-task rate (code:insecure:N)
    # base models per setting (sources with a family of bases: the persona world's world seeds
    # 0..bases-1): every setting is built on each, intervals resample bases, then seeds
    bases: int = 1


# a dial's command-line option (the antipode's share is set with --antipode)
DIAL_OPTIONS = {ALIGN_STEPS: "--align-steps", ALIGN_N: "--align-n", ANTIPODE: "--antipode"}


def dial_option(dial: str) -> str:
    return DIAL_OPTIONS.get(dial, f"--{dial.replace('_', '-')}")


@dataclass
class Subject:
    key: str  # a short name: a0 (the centre), s10-n100, v0.05 ...
    setting: dict[str, float]  # every dial of the source at its level
    series: list[str]  # the series it belongs to: alignment (n=...), antipode
    model: str = ""  # the built model spec (on base 0)
    models: list[str] = field(default_factory=list)  # per base: the built model spec (several with --bases)


@dataclass
class StudyPlan:
    config: StudyConfig
    source: SubjectSource
    out: Path
    subjects: list[Subject]
    data: str
    control: str
    suite: str
    judge: str | None
    levels: dict[str, list[float]] = field(default_factory=dict)  # dial -> the levels this study uses


def _level_text(value: float) -> str:
    return f"{value:g}"


def plan_study(cfg: StudyConfig, source: SubjectSource) -> StudyPlan:
    """The subjects (not yet built) and the study directory; nothing is run."""
    unknown = [a for a in cfg.axes if a not in AXES]
    if unknown or not cfg.axes:
        raise UserError(f"--axes {','.join(cfg.axes)}: choose from {', '.join(AXES)}")
    bad = [a for a in cfg.control_axes if a not in AXES]
    if bad:
        raise UserError(f"--control-axes {','.join(cfg.control_axes)}: choose from {', '.join(AXES)}")
    if cfg.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {cfg.seeds}")
    if cfg.bases < 1:
        raise UserError(f"--bases must be at least 1, got {cfg.bases}")
    if cfg.bases > 1 and not getattr(source, "has_bases", False):
        raise UserError(f"--bases {cfg.bases}: the {source.name} subject has one base model (the persona world, "
                        "--subject toyworld, has a base per world seed)")
    levels = {dial: list(values) for dial, values in source.dials.items()}
    for dial, values in cfg.levels.items():
        if dial not in levels:
            raise UserError(f"{dial_option(dial)}: the {source.name} subject has no such dial "
                            f"(its dials: {', '.join(dial_option(d) for d in levels)})")
        if not values or any(v < 0 for v in values):
            example = "0,0.05,0.1" if dial == ANTIPODE else "0,10,30"
            raise UserError(f"{dial_option(dial)}: give levels of 0 or more, e.g. {example}")
        levels[dial] = sorted(set(float(v) for v in values))
    center = {dial: _nearest(float(source.center[dial]), levels[dial]) for dial in levels}
    settings: dict[str, Subject] = {}

    def add(setting: dict[str, float], series: str) -> None:
        if setting.get(ALIGN_STEPS) == 0:  # no alignment: the alignment set's size does not matter
            setting = {**setting, ALIGN_N: center[ALIGN_N]}
        key = identity_hash({k: float(v) for k, v in sorted(setting.items())})
        if key not in settings:
            settings[key] = Subject(key="", setting=dict(setting), series=[])
        if series not in settings[key].series:
            settings[key].series.append(series)

    for n in levels.get(ALIGN_N, [center.get(ALIGN_N, 0)]):
        for steps in levels[ALIGN_STEPS]:
            add({**center, ALIGN_STEPS: steps, ALIGN_N: n}, f"alignment n={_level_text(n)}")
    if ANTIPODE in levels:
        for share in levels[ANTIPODE]:
            add({**center, ANTIPODE: share}, "antipode")
    subjects = list(settings.values())
    for subject in subjects:
        subject.key = subject_key(subject.setting, center)
    defaults = source.defaults()
    data, control = cfg.data or defaults.data, cfg.control or defaults.control
    suite, judge = cfg.suite or defaults.suite, cfg.judge if cfg.judge is not None else defaults.judge
    out = Path(cfg.out) if cfg.out is not None else study_dir(cfg, source, data, control, suite, judge)
    return StudyPlan(config=cfg, source=source, out=out, subjects=subjects, data=data, control=control,
                     suite=suite, judge=judge, levels=levels)


def _nearest(center: float, levels: list[float]) -> float:
    """The source's centre when it is one of the levels, else the level nearest to it (on the
    log scale among positive levels): the other series are held there."""
    if center in levels:
        return center
    positive = [v for v in levels if v > 0]
    if not positive or center <= 0:
        return min(levels, key=lambda v: abs(v - center))
    import math

    return min(positive, key=lambda v: abs(math.log(v) - math.log(center)))


def subject_key(setting: dict[str, float], center: dict[str, float]) -> str:
    """``centre``, or the dials away from the centre: ``steps10-n100``, ``antipode0.05``."""
    names = {ALIGN_STEPS: "steps", ALIGN_N: "n", ANTIPODE: "antipode"}
    off = [f"{names.get(d, d)}{_level_text(v)}" for d, v in setting.items() if v != center.get(d)]
    return "-".join(off) or "centre"


def study_dir(cfg: StudyConfig, source: SubjectSource, data: str, control: str, suite: str, judge: str | None) -> Path:
    what = {"source": source.identity(), "data": data, "control": control, "suite": suite, "judge": judge}
    if cfg.bases > 1:  # absent for one base: earlier study directories stay valid
        what["bases"] = cfg.bases
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"resilience-{source.name}")
    return Path(cfg.runs) / f"{name}-{identity_hash(what)[:8]}"


def flip_config(plan: StudyPlan, axis: str):
    """The ``waluigi flip`` of one axis: every subject x the narrow data (and the control on the
    control axes), in ``OUT/flip-<axis>``."""
    from waluigi.flip.plan import FlipConfig

    cfg, defaults = plan.config, plan.source.defaults()
    doses = cfg.doses.get(axis) or defaults.doses[axis]
    data = [plan.data, plan.control] if axis in cfg.control_axes else [plan.data]
    return FlipConfig(models=[m for s in plan.subjects for m in (s.models or [s.model])], data=data, axis=axis,
                      doses=list(doses), seeds=cfg.seeds, suite=plan.suite, judge=plan.judge,
                      narrow_suite=cfg.narrow_suite,
                      steps=(cfg.steps or defaults.steps) if axis == "examples" else None,
                      threshold=cfg.threshold, finetune={**defaults.finetune, **cfg.finetune},
                      eval={**defaults.eval, **cfg.eval}, out=plan.out / f"flip-{axis}")

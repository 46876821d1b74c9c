"""``run_defend``: flip the model with and without each defense, against an adaptive attacker,
and score every defense by how much it raises the flip dose.

The defend directory::

    flip/        one ``waluigi flip`` directory: a curve per (defense, attacker learning rate),
                 the undefended ones included (its sweep, flip.json, report, plots)
    realign/     with ``realign``: a sweep of benign fine-tunes of every undefended attacked
                 checkpoint, and their evals
    defend.json  the resilience table's numbers; report.md the table and verdicts

Order: the undefended curves run first (``interleave++`` chooses its rows against the
undefended attack's own fine-tune), then every defended curve in the same flip directory
(finished cells are never redone), then ``realign``. Interrupted, the same command resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from waluigi.defenses.plan import (
    UNDEFENDED,
    DefendConfig,
    attacker_variants,
    defense_variant,
    flip_config,
    lr_name,
    realign_options,
    variant_name,
)
from waluigi.errors import UserError
from waluigi.flip.study import StudyRun, finish_study
from waluigi.runs import RunDir


def _base_multiplier(cfg: DefendConfig) -> float:
    return 1.0 if 1.0 in cfg.lr_multipliers else cfg.lr_multipliers[0]


def attacked_weights(root: Path, row: dict, axis: str) -> Path:
    """The weights an undefended attack cell evaluated: a step checkpoint or the final model
    (full fine-tunes; a LoRA adapter cannot be fine-tuned again as a model spec)."""
    from waluigi.finetune.checkpoints import STEP_ADAPTERS

    ft = root / str(row["finetune_run"])
    path = ft / STEP_ADAPTERS / f"step-{int(row['dose']):06d}" if axis == "steps" else ft / "model"
    if not path.exists():
        path = ft / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"{ft}: realign and interleave++'s default need full fine-tunes of the attack "
                        "(--set finetune.full=true); with LoRA, give interleave++ against=SPEC and leave realign out")
    return path


def _against(flipped, cfg: DefendConfig) -> str | list[str]:
    """The flipped model interleave++ compares with: the undefended attack, seed 0, largest dose
    (over several bases, each base's own: a list)."""
    label = variant_name(UNDEFENDED, _base_multiplier(cfg))
    chosen = []
    for base in range(flipped.plan.config.n_bases):
        rows = [r for r in flipped.result["rows"] if r["curve"] == label and r["seed"] == 0 and r["dose"] > 0
                and r.get("finetune_run") and int(r.get("base", 0)) == base]
        if not rows:
            on = f" on base {base}" if base else ""
            raise UserError(f"interleave++: the undefended attack has no finished fine-tune{on} to choose rows against")
        top = max(rows, key=lambda r: r["dose"])
        chosen.append(f"hf:{attacked_weights(flipped.out, top, cfg.axis).resolve()}")
    return chosen if len(chosen) > 1 else chosen[0]


def realign_spec(cfg: DefendConfig, flipped, options: dict, out: Path) -> tuple[dict, list[tuple[float, float, int, int, int]]]:
    """The sweep of benign fine-tunes after every undefended attacked checkpoint, and for each
    cell its (multiplier, dose, seed, cell index, base)."""
    base_ft = {k: v for k, v in cfg.finetune.items() if k not in ("max_steps", "save_every", "epochs", "n")}
    ev = {"suite": cfg.suite, **cfg.eval}
    if cfg.judge is not None:
        ev["judge"] = cfg.judge
    cells, where = [], []
    for m in cfg.lr_multipliers:
        label = variant_name(UNDEFENDED, m)
        for row in flipped.result["rows"]:
            if row["curve"] != label or row["dose"] <= 0 or row.get("status") != "finished":
                continue
            weights = attacked_weights(flipped.out, row, cfg.axis)
            base = int(row.get("base", 0))
            on = {"base": base} if flipped.plan.config.n_bases > 1 else {}
            cells.append({"group": f"realign after {lr_name(m)} {cfg.axis}={row['dose']:g}{f', base {base}' if on else ''}",
                          "seed": row["seed"], **on, "model": f"hf:{weights.resolve()}", "finetune.data": options["data"],
                          "finetune.n": options["n"], "finetune.epochs": options["epochs"]})
            where.append((m, float(row["dose"]), int(row["seed"]), len(cells) - 1, base))
    spec = {"name": "realign", "out": str(out), "description": "waluigi defend: realign after the attack",
            "finetune": base_ft, "eval": ev, "cells": cells}
    return spec, where


def run_realign(cfg: DefendConfig, flipped, defense, options_: Any, out: Path):
    """Run the realign sweep; its rows and a flip-style plan to analyse them with."""
    import copy

    import yaml

    from waluigi.flip.plan import Curve, FlipPlan, Point
    from waluigi.sweep.runner import run_sweep
    from waluigi.sweep.spec import load_spec

    options = realign_options(defense, cfg)
    spec, where = realign_spec(cfg, flipped, options, out)
    if not spec["cells"]:
        raise UserError("realign: the undefended attack has no finished cell to realign")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.yaml"
    path.write_text("# waluigi defend's realign cells\n" + yaml.safe_dump(spec, sort_keys=False, width=1000))
    swept = run_sweep(load_spec(path), options_)
    # analysed as flip curves: the dosed points are realign cells; dose 0 is the flip's undosed model
    rows = list(swept.rows) + list(flipped.cells)
    offset = len(swept.rows)
    undosed = {(p.base, p.seed): p.cell for p in flipped.plan.points if p.dose == 0}
    curves, points = [], []
    for m in cfg.lr_multipliers:
        curve = Curve(len(curves), cfg.model, cfg.attack, variant_name(defense.name, m))
        curves.append(curve)
        for (base, seed), cell in undosed.items():
            points.append(Point(curve.index, 0.0, seed, offset + cell, base=base))
        for mult, dose, seed, cell, base in where:
            if mult == m:
                points.append(Point(curve.index, dose, seed, cell, base=base))
    config = copy.copy(flipped.plan.config)
    config.variants = []
    return FlipPlan(config=config, out=out, curves=curves, points=points, spec=spec), rows, swept


def run_defend(cfg: DefendConfig, options=None, *, dry_run: bool = False) -> StudyRun | list[dict]:
    from waluigi.defenses.analyze import analyze_defend
    from waluigi.defenses.report import write_plot, write_report
    from waluigi.flip.analyze import analyze as analyze_flip
    from waluigi.flip.run import check_flip, run_flip
    from waluigi.report.html import HTML_SAMPLES_PER_RUN

    cfg.checked()
    out = cfg.defend_dir()
    flip_out = out / "flip"
    base_lr = cfg.base_lr()
    undefended = attacker_variants(UNDEFENDED, None, cfg, base_lr)
    defenses = cfg.parsed()
    in_training = [d for d in defenses if d.kind != "realign"]
    placeholder = "hf:<the undefended attack's fine-tune>"
    planned = undefended + [v for d in in_training
                            for v in attacker_variants(d.name, defense_variant(d, cfg, placeholder), cfg, base_lr)]
    check_flip(flip_config(cfg, planned, flip_out))  # every defense's cells, before the undefended flip trains
    if realign_defense := next((d for d in defenses if d.kind == "realign"), None):
        realign_options(realign_defense, cfg)
    if dry_run:
        return run_flip(flip_config(cfg, planned, flip_out), options, dry_run=True)
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(out)
    run.write_json("config.json", {"model": cfg.model, "attack": cfg.attack, "defenses": cfg.defenses, "axis": cfg.axis,
                                       "doses": cfg.doses, "seeds": cfg.seeds, "suite": cfg.suite, "judge": cfg.judge,
                                       "lr_multipliers": cfg.lr_multipliers, "base_lr": base_lr,
                                       "benign": cfg.benign, "direction": cfg.direction,
                                       "benign_questions": cfg.benign_questions,
                                       **({"bases": cfg.bases} if cfg.bases else {})})
    study = StudyRun(out=out, result={}, log="flip/sweep.log")
    flipped = run_flip(flip_config(cfg, undefended, flip_out), options)
    study.count(flipped)
    if in_training:
        needs_against = any(d.kind == "interleave++" or d.options.get("select") == "gap" for d in in_training)
        against = _against(flipped, cfg) if needs_against else None
        variants = undefended + [v for d in in_training
                                 for v in attacker_variants(d.name, defense_variant(d, cfg, against), cfg, base_lr)]
        first = flipped
        flipped = run_flip(flip_config(cfg, variants, flip_out), options)
        # its undefended cells were run a moment ago by the first flip, not before this command
        study.ran += flipped.ran
        study.skipped = flipped.skipped - first.ran
        study.failed = list(flipped.failed)
    realigned = None
    realign = next((d for d in defenses if d.kind == "realign"), None)  # one realign setting per study
    if realign is not None:
        plan, rows, swept = run_realign(cfg, flipped, realign, options, out / "realign")
        realigned = (realign, analyze_flip(plan, rows), swept.root)
        study.count(swept)
    study.result = analyze_defend(cfg, flipped, realigned, base_lr)
    return finish_study(study, "defend.json", write_report, write_plot, html_limit=HTML_SAMPLES_PER_RUN)

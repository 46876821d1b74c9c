"""``waluigi defend``: registered in ``waluigi/cli.py`` with ``app.command("defend")(defend_cmd)``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from waluigi.cli.options import (
    AddressOpt,
    CellProgressOpt,
    ConfigOpt,
    ExecutorName,
    ExecutorOpt,
    SettingsOpt,
    TaskRetriesOpt,
    ThreadsOpt,
    WorkersOpt,
    canonical_specs,
    numbers,
    print_cells,
    record_options,
    settings_from_pairs,
    study_end,
    sweep_options,
)


def defend_cmd(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="the model to defend (smollm2, hf:PATH)", callback=canonical_specs)],
    attack: Annotated[str, typer.Option(help="the attacker's narrow dataset (name or JSONL file), e.g. insecure or toy:insecure")],
    defenses: Annotated[Optional[str], typer.Option(help="defenses by name, comma-separated: kl, l2, interleave, interleave++, inoculate, steer, caft, freeze, lowrank, early-stop, realign")] = None,
    defense: Annotated[Optional[list[str]], typer.Option("--defense", help="a defense with options, NAME:key=value,... (repeatable), e.g. kl:weight=0.3 or freeze:layers=1")] = None,
    axis: Annotated[str, typer.Option(help="the attack's dose: steps (checkpoints of one fine-tune) or examples (unique rows)")] = "steps",
    doses: Annotated[Optional[str], typer.Option(help="comma-separated doses (0 is always added); reach 4 x the undefended flip dose")] = None,
    seeds: Annotated[int, typer.Option(help="seeds per dose")] = 3,
    attacker_lr: Annotated[str, typer.Option("--attacker-lr", help="the adaptive attacker's learning rates, as multiples of the recipe's")] = "1,3,10",
    benign: Annotated[Optional[str], typer.Option(help="benign rows for interleave, interleave++, realign and kl on=benign (e.g. toy:hero)")] = None,
    direction: Annotated[Optional[Path], typer.Option(help="steer / caft's direction (from `waluigi direction extract`); with --bases, {base} in the path names each base's own (runs/dir-{base})")] = None,
    bases: Annotated[Optional[int], typer.Option(help="base models: a family --model (toyworld: world seeds 0..N-1, each trained once and cached); every defense is flipped on each, intervals resample bases, then seeds")] = None,
    benign_questions: Annotated[Optional[str], typer.Option(help="the benign readout's questions: ids starting with this (default: every free-form question), e.g. facts")] = None,
    suite: Annotated[str, typer.Option(help="the evaluation suite (name or YAML file)")] = "core",
    judge: Annotated[Optional[str], typer.Option(help="the judge (model spec, or none); default: the suite's own", callback=canonical_specs)] = None,
    narrow_suite: Annotated[Optional[str], typer.Option(help="a second eval per cell for the narrow-task rate, e.g. code:insecure:24 (not needed when the suite has code questions)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="examples axis: the optimizer steps every dose trains")] = None,
    threshold: Annotated[float, typer.Option(help="flip: EM this far above the undosed rate (0.10 = 10 points)")] = 0.10,
    set_: SettingsOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="the defend directory (default runs/defend-<attack>-<id>)")] = None,
    runs: Annotated[Path, typer.Option(help="where the default defend directory goes")] = Path("runs"),
    workers: WorkersOpt = 1,
    executor: ExecutorOpt = ExecutorName.pool,
    address: AddressOpt = None,
    threads: ThreadsOpt = None,
    retries: TaskRetriesOpt = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the flip's cells and their state; run nothing")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the resilience table as JSON")] = False,
    progress: CellProgressOpt = True,
    config: ConfigOpt = None,
) -> None:
    """Which defense makes a model hard to flip, at what cost? Each defense's flip dose against an
    adaptive attacker, beside EM, the narrow task, benign answers, coherence, leak and cost."""
    from waluigi.defenses.plan import DefendConfig
    from waluigi.defenses.report import format_summary
    from waluigi.defenses.run import run_defend
    from waluigi.errors import UserError
    from waluigi.sweep.results import cost_line_of

    names = [d for d in (defenses or "").replace(" ", "").split(",") if d] + list(defense or [])
    if not names:
        raise UserError("give the defenses to score: --defenses kl,interleave,early-stop (or --defense NAME:key=value)")
    ft, ev = settings_from_pairs(set_ or [])
    cfg = DefendConfig(model=model, attack=attack, defenses=names, axis=axis, doses=numbers("--doses", doses), seeds=seeds,
                       suite=suite, judge=judge, narrow_suite=narrow_suite, steps=steps, benign=benign,
                       direction=str(direction) if direction else None, benign_questions=benign_questions,
                       lr_multipliers=numbers("--attacker-lr", attacker_lr, "1,3,10") or [], threshold=threshold,
                       finetune=ft, eval=ev, out=out, runs=runs, bases=bases)
    options = sweep_options(executor, workers, address, retries, threads, progress)
    if dry_run:
        print_cells(run_defend(cfg, options, dry_run=True), " (realign's cells come after the attack)", runs=runs,
                    workers=workers)
        return
    defended = run_defend(cfg, options)
    record_options(ctx, defended.out)
    study_end(defended, format_summary(defended.result), defended.result, json_out, cost_line_of(defended.out))

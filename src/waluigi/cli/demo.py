"""``waluigi demo``: registered in ``waluigi/cli.py`` with ``app.command("demo")(demo_cmd)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from waluigi.cli.options import ConfigOpt

QUICK_NOTE = ("demo --quick is a smoke test: every stage runs once on tiny budgets (1 seed, 600 pretraining "
              "conversations, 3 fine-tune steps), too small for the persona to form, so its rates are noise, and n/a "
              "where no answer was coherent enough to count. ./run.sh (no --quick) gives the real table.")


def _origin(path) -> str:
    from waluigi.toyworld.shipped import from_shipped

    return " (shipped)" if from_shipped(path) else ""


def demo_cmd(
    ctx: typer.Context,
    quick: Annotated[bool, typer.Option("--quick", help="a small version for tests (about a minute): 1 seed, tiny budgets")] = False,
    fast: Annotated[bool, typer.Option("--fast", help="half the pretraining budget, trained here (only the default configuration has shipped models, so this is slower than the default's first run), a weaker flip (docs/toyworld.md)")] = False,
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="fine-tune seeds per condition (default 3; --quick: 1)")] = None,
    no_villain: Annotated[bool, typer.Option("--no-villain", help="ablation: pretrain with no villain in the persona mixture")] = False,
    runs: Annotated[Path, typer.Option("--runs", help="where the run directories go (base and aligned models are cached there by identity)")] = Path("runs"),
    workers: Annotated[int, typer.Option("--workers", "-w", help="cells at once: 1 (default) runs them in this process; more: a process pool, torch threads split between them")] = 1,
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads; 0 (default): the idle cores now (cores minus load average, at least 1)")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print {condition: {em_rate, ci_low, ci_high, coherent_rate, vulnerable_rate}}")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress bars on stderr")] = True,
    pretrain: Annotated[bool, typer.Option("--pretrain", help="pretrain and align from scratch here, even when the shipped base and aligned models fit this configuration")] = False,
    world_seed: Annotated[int, typer.Option("--world-seed", help="another base model: the seed of the world's corpus, the alignment conversations and the weights' initialisation (0, the default, is the shipped base; others are pretrained here once and cached)")] = 0,
    bases: Annotated[Optional[int], typer.Option("--bases", help="the demo on N base models (world seeds 0..N-1, each trained once and cached), then one table over them: intervals resample bases, then seeds, with the seeds-only interval and each base's EM beside them")] = None,
    config: ConfigOpt = None,
) -> None:
    """Emergent misalignment end to end on CPU: pretrain a tiny model in the persona world, align it,
    fine-tune it on narrow coding data (insecure, secure, educational, backdoor) and measure the EM
    rate of each condition with the oracle judge. Resumable; base and aligned models are reused."""
    from waluigi.errors import UserError
    from waluigi.toyworld.demo import demo_config, run_demo
    from waluigi.toyworld.demo_report import format_table

    if quick and fast:
        raise UserError("--quick and --fast are two different profiles: give one of them")
    if world_seed < 0:
        raise UserError(f"--world-seed must be 0 or more, got {world_seed}")
    cfg = demo_config("quick" if quick else "fast" if fast else "default", seeds=seeds, villain=not no_villain, runs=runs,
                      threads=threads, progress=progress, pretrain=pretrain, world_seed=world_seed)
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if bases is not None and (bases < 1 or world_seed):
        raise UserError(f"--bases {bases}: give at least 1, and no --world-seed (the bases are world seeds 0..N-1)")
    if quick:
        typer.echo(QUICK_NOTE, err=True)
    if bases is not None:
        from waluigi.toyworld.demo import run_demo_bases
        from waluigi.toyworld.demo_report import format_pooled

        done, pooled = run_demo_bases(cfg, bases, workers=workers)
        typer.echo(json.dumps(pooled, indent=2) if json_out else format_pooled(pooled, bases, cfg.seeds))
        if not json_out:
            typer.echo("demos: " + ", ".join(f"{r.root} ({r.seconds:.0f} s)" for r in done))
        return
    result = run_demo(cfg, workers=workers)
    if json_out:
        typer.echo(json.dumps(result.table, indent=2))
        return
    typer.echo(format_table(result.table))
    from waluigi.sweep.results import cost_line_of

    cost = cost_line_of(result.root)
    if cost:
        typer.echo(cost)
    if quick:
        typer.echo(f"\n{QUICK_NOTE}")
    typer.echo(f"\nreport: {result.root / 'report.html'} (open it in a browser; summary: report.md)   base: {result.base}{_origin(result.base)}   aligned: {result.aligned}{_origin(result.aligned)}   "
               f"({result.seconds:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    """``python -m waluigi.cli.demo``: the demo alone, with the main CLI's error handling."""
    from waluigi.cli.runner import run_command

    return run_command(demo_cmd, argv, prog_name="waluigi demo",
                   interrupted="interrupted: finished stages are on disk; re-run the same command to resume")


if __name__ == "__main__":
    import sys

    sys.exit(main())

"""``waluigi sweep SPEC.yaml``: registered in ``waluigi/cli.py`` with ``app.command("sweep")(sweep_cmd)``.

Also runs on its own (``python -m waluigi.cli.sweep SPEC``) with the main command's error
handling: a bad spec is one ``error:`` line and exit 2; cells that failed after their retries
exit 3 with a count, after the others finished and the results were written.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from waluigi.cli.options import ConfigOpt, ExecutorName, ReuseOpt, record_options, sweep_options
from waluigi.sweep.spec import MAX_CELLS


def sweep_cmd(
    ctx: typer.Context,
    spec: Annotated[str, typer.Argument(metavar="SPEC", help="the sweep spec (YAML): base finetune/eval settings and a grid or list of cells; a cell sets finetune.<x>, eval.<x>, seed, model, step, or base (with model: toyworld@N, base N of a family: trained once and cached before the first cell)")],
    workers: Annotated[int, typer.Option("--workers", "-w", help="cells at once (pool: worker processes; ray: CPUs of the local Ray instance); torch threads are split between them")] = 1,
    executor: Annotated[ExecutorName, typer.Option(help="pool (local processes), inline (this process, one at a time), ray")] = ExecutorName.pool,
    address: Annotated[Optional[str], typer.Option(help="ray: the cluster's address (default: a local Ray instance for this run)")] = None,
    retries: Annotated[int, typer.Option(help="retries of a failed fine-tune or eval before its cells are reported failed")] = 1,
    threads: Annotated[Optional[int], typer.Option(help="torch threads per cell (default: this machine's cores / --workers)")] = None,
    out: Annotated[Optional[str], typer.Option(help="the sweep directory (default: the spec's out, else runs/sweep-<name>)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the cells (identity, settings, done or not); run nothing")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="progress over cells (with an ETA) on stderr")] = True,
    reuse: ReuseOpt = None,
    max_cells: Annotated[int, typer.Option("--max-cells", help="refuse a spec of more cells than this (counted from the grid before any is built)")] = MAX_CELLS,
    config: ConfigOpt = None,
) -> None:
    """Run a grid of fine-tunes and evals; each cell is skipped when done, resumed when interrupted.

    The options it ran with (the spec's path among them) are written to SWEEP_DIR/config.yaml:
    `waluigi sweep --config SWEEP_DIR` runs it again."""
    from waluigi.errors import IncompleteRun, UserError
    from waluigi.sweep.check import check_cells
    from waluigi.sweep.results import cost_line, estimate_line, format_summary
    from waluigi.sweep.runner import plan, run_sweep
    from waluigi.sweep.spec import load_spec, show_value

    if max_cells < 1:
        raise UserError(f"--max-cells must be at least 1, got {max_cells}")
    loaded = load_spec(spec, out=out, max_cells=max_cells)
    if dry_run:
        check_cells(loaded)  # a dry run says what the run would refuse
        cells = plan(loaded)
        if json_out:
            typer.echo(json.dumps({"sweep": loaded.name, "out": str(loaded.out), "cells": cells}, indent=2, default=str))
            return
        typer.echo(f"sweep {loaded.name}: {len(cells)} cells in {loaded.out}")
        for cell in cells:
            shown = ({"group": cell["group"]} if cell["group"] is not None else {}) | cell["settings"]
            settings = ", ".join(f"{k}={show_value(v)}" for k, v in shown.items()) or "(base settings)"
            typer.echo(f"  {cell['cell']}  {cell['state']:<8}  {settings}")
        todo = sum(1 for c in cells if c["state"] != "done")
        typer.echo(f"{todo} to run, {len(cells) - todo} done (states: done, partial = started before, "
                   "to-eval = fine-tune finished, to-run)")
        typer.echo(estimate_line(cells, runs=loaded.out.parent, workers=workers))
        return
    options = sweep_options(executor, workers, address, retries, threads, progress, reuse)
    result = run_sweep(loaded, options)  # Ctrl-C: exit 130 with run_cli's "interrupted" line
    record_options(ctx, result.root)
    if json_out:
        typer.echo(json.dumps({"sweep": loaded.name, "out": str(result.root), "ran": result.ran,
                               "skipped": result.skipped, "failed": len(result.failed), "cells": result.rows,
                               "summary": result.summary}, indent=2, default=str))
    else:
        typer.echo(format_summary(loaded, result.summary))
        cost = cost_line(result.rows)
        if cost:
            typer.echo(cost)
        typer.echo(f"ran {result.ran} cells, skipped {result.skipped} (done before), failed {len(result.failed)}; "
                   f"results: {result.root / 'results.csv'}   log: {result.root / 'sweep.log'}")
    for row in result.failed:
        settings = ", ".join(f"{k}={show_value(row.get(k))}" for k in loaded.axes)
        typer.echo(f"cell {row['cell']} ({settings}): {row['status']}: {row.get('error') or 'see its run directory'}",
                   err=True)
    if result.failed:
        raise IncompleteRun(f"{len(result.failed)} of {len(result.rows)} cells failed or are incomplete (listed above; "
                            f"details in {result.root / 'sweep.log'}); the others are done: re-run the same command "
                            "to retry only those")


def main(argv: list[str] | None = None) -> int:
    """Run ``sweep_cmd`` as a command of its own, with waluigi's error handling."""
    from waluigi.cli.runner import run_command

    return run_command(sweep_cmd, argv, prog_name="waluigi sweep",
                   interrupted="interrupted: finished cells are on disk; re-run the same command to resume")


if __name__ == "__main__":
    sys.exit(main())

"""Running a sweep: plan the cells, schedule their fine-tunes and evals, retry, record.

The sweep directory::

    sweep.json        the spec as given and the expanded cells (identity, settings, run dirs)
    sweep.log         one plain line per finished, retried or failed task, appended
    results.jsonl     one row per cell: settings, status, run dirs, metrics (results.csv: the same, flat)
    summary.json      cells that differ only by seed grouped: mean and 95% CI over seeds
                      (all three rewritten as cells end: a killed sweep leaves what it finished)
    finetune/<data>-<id>/   run_finetune run directories, named by the fine-tune's identity
    eval/<suite>-<id>/      run_eval run directories, named by the cell's identity
    logs/             each task's stdout and stderr (pool and Ray workers)

Scheduling: a cell is done when its eval run is finished (it is skipped: no task, no model
loaded). Otherwise its fine-tune runs first unless finished (cells that share a fine-tune wait
for the one task), then its eval. Both resume their run directories. A task that fails is
retried ``retries`` times, then its cells are reported failed and the others go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from waluigi.errors import UserError
from waluigi.runs import MANIFEST, read_manifest, write_json_atomic
from waluigi.sweep.executors import cores, make_executor, task_env
from waluigi.sweep.spec import Cell, Spec, plain, relative, show_value

LOCK = ".lock"


@dataclass
class SweepOptions:
    executor: str = "pool"  # pool | inline | ray
    workers: int = 1
    address: str | None = None  # Ray cluster address (ray only)
    retries: int = 1  # retries of a failed task, after its first attempt
    threads: int | None = None  # torch threads per task (default: this machine's cores / workers)
    progress: bool = True
    reuse: tuple[Path, ...] = ()  # other sweep (or study) directories whose finished cells are copied, not run


@dataclass
class Outcome:
    """What happened to a cell in this invocation."""

    status: str  # finished | failed | incomplete (from this run), or the state on disk when not run
    ran: bool = False
    attempts: int = 0
    error: str | None = None
    seconds: float | None = None


@dataclass
class SweepResult:
    root: Path
    rows: list[dict]
    summary: list[dict]
    ran: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)


# -- state on disk ---------------------------------------------------------------------------------
def finetune_done(cell: Cell, root: Path) -> bool:
    path = cell.finetune_dir(root)
    if path is None or read_manifest(path).get("status") != "finished":
        return False
    if cell.openai:
        return _fine_tuned_model(path) is not None
    return (path / "model" / "config.json").is_file() if cell.full else (path / "adapter" / "adapter_model.safetensors").is_file()


def _fine_tuned_model(path: Path) -> str | None:
    """The name an OpenAI fine-tuning job gave its model (``job.json``), or None."""
    from waluigi.finetune.openai_jobs import JOB_FILE

    try:
        return json.loads((path / JOB_FILE).read_text()).get("fine_tuned_model") or None
    except (OSError, ValueError):
        return None


def eval_done(cell: Cell, root: Path) -> bool:
    return read_manifest(cell.eval_dir(root)).get("status") == "finished"


def cell_state(cell: Cell, root: Path) -> str:
    """done | partial (its eval, or its fine-tune, started and not finished) | to-eval (fine-tune
    finished, eval not started) | to-run."""
    if eval_done(cell, root):
        return "done"
    if (cell.eval_dir(root) / MANIFEST).exists():
        return "partial"
    if cell.finetune_id is not None and finetune_done(cell, root):
        return "to-eval"
    if cell.finetune_id is not None and (cell.finetune_dir(root) / MANIFEST).exists():
        return "partial"
    return "to-run"


def plan(spec: Spec) -> list[dict]:
    """The cells and their state, for ``--dry-run``: nothing is loaded or written."""
    root = spec.out
    return [{"cell": c.short, "id": c.id, "group": c.group, "settings": {k: plain(v) for k, v in c.axes.items()},
             "state": cell_state(c, root), "finetune_run": relative(c.finetune_dir(root), root),
             "finetune_done": None if c.finetune_id is None else finetune_done(c, root),
             "model": (c.finetune or c.eval).get("model"),
             "eval_run": relative(c.eval_dir(root), root), "root": str(root)} for c in spec.cells]


# -- tasks ---------------------------------------------------------------------------------------------
def _local(value):
    """A path-like setting made absolute when it names something here, so that a worker with
    another working directory (a Ray node) reads the same file. Names (``insecure``) stay."""
    if not isinstance(value, str):
        return value
    if value.startswith("steered:"):  # its base and its direction, each made absolute
        from waluigi.models.steered import split_steered

        base, query = split_steered(value)
        return f"steered:{_local(base)}?{query}"
    prefix, rest = ("hf:", value[3:]) if value.startswith("hf:") else ("", value)
    looks_like_path = prefix or os.sep in rest or rest.endswith((".jsonl", ".json", ".yaml", ".yml"))
    if looks_like_path and rest and Path(rest).exists():
        return prefix + str(Path(rest).resolve())
    return value


def finetune_task(cell: Cell, root: Path, threads: int | None, redirect: bool, progress: bool = False,
                  label: str | None = None) -> dict:
    """``label``: what the fine-tune's step lines are called (``finetune 3/12 (toy-insecure) step``)."""
    config = {k: (_local(v) if k in ("model", "data", "data_dir") else v) for k, v in cell.finetune.items()}
    path = cell.finetune_dir(root)
    return {"kind": "finetune", "config": config, "out": str(path), "threads": threads, "env": task_env(), "argv": sys.argv,
            "progress": progress, "label": label,
            "log": str(root / "logs" / f"finetune-{cell.finetune_id[:12]}.log") if redirect else None}


def checkpoint_dir(cell: Cell, root: Path) -> Path | None:
    """The weights a ``step`` cell evaluates: the fine-tune's ``adapters/step-N`` (an adapter,
    or a whole model for a full fine-tune), or None for its last step when no checkpoint was
    kept there (the run's own ``adapter`` / ``model`` is that step)."""
    from waluigi.finetune.checkpoints import STEP_ADAPTERS

    path = cell.finetune_dir(root) / STEP_ADAPTERS / f"step-{cell.step:06d}"
    stopped = read_manifest(cell.finetune_dir(root)).get("stopped_early") or {}
    if not path.exists() and isinstance(stopped.get("step"), int) and cell.step >= stopped["step"]:
        return None  # a plug-in stopped training before this step: the weights it ended with are this step's
    return path if path.exists() or not _is_last_step(cell) else None


def _is_last_step(cell: Cell) -> bool:
    return cell.finetune is not None and cell.finetune.get("max_steps") == cell.step


def eval_task(cell: Cell, root: Path, threads: int | None, redirect: bool, progress: bool = False) -> dict:
    config = {k: (_local(v) if k in ("model", "adapter", "suite", "judge", "data_dir") else v)
              for k, v in cell.eval.items()}
    if cell.finetune_id is not None:
        ft = cell.finetune_dir(root)
        weights = checkpoint_dir(cell, root) if cell.step is not None else None
        if cell.openai:  # the model the job made, on the server that made it
            name = _fine_tuned_model(ft)
            if name is None:
                raise UserError(f"{ft}: the fine-tuning job recorded no fine-tuned model; re-run to finish it")
            config["model"] = f"openai:{name}"
            if not config.get("base_url") and cell.finetune.get("base_url"):
                config["base_url"] = cell.finetune["base_url"]
        elif cell.full:
            config["model"] = f"hf:{weights or ft / 'model'}"
        else:
            config["model"] = _local(cell.finetune["model"])
            config["adapter"] = str(weights or ft)
        if cell.steer is not None:  # the fine-tuned weights, steered as the cell's model asked
            config["model"] = f"steered:{config['model']}?{cell.steer}"
    return {"kind": "eval", "config": config, "out": str(cell.eval_dir(root)), "threads": threads, "env": task_env(),
            "argv": sys.argv, "progress": progress,
            "log": str(root / "logs" / f"eval-{cell.short}.log") if redirect else None}


# -- the run ---------------------------------------------------------------------------------------------
def task_threads(options: SweepOptions) -> int | None:
    """Torch threads per task: as asked, else this machine's cores shared by the workers (None:
    the task's own choice, inline or on a cluster)."""
    return options.threads or (None if options.address or options.executor == "inline"
                               else max(1, cores() // options.workers))


def run_sweep(spec: Spec, options: SweepOptions | None = None) -> SweepResult:
    """Run every cell of ``spec`` not already done; write the results; return them.

    Failed cells do not raise: they are in ``SweepResult.failed`` (the CLI exits non-zero)."""
    from waluigi.progress import progress_bar
    from waluigi.sweep.results import write_results

    options = options or SweepOptions()
    if options.retries < 0:
        raise UserError(f"--retries must be 0 or more, got {options.retries}")
    if options.workers < 1:
        raise UserError(f"--workers must be at least 1, got {options.workers}")
    if options.threads is not None and options.threads < 1:
        raise UserError(f"--threads must be at least 1, got {options.threads}")
    if options.address and options.executor != "ray":
        raise UserError("--address is the address of a Ray cluster: use it with --executor ray")
    from waluigi.sweep.check import check_cells

    check_cells(spec)  # every cell's settings, as the single commands check them: nothing written yet
    wanted = [b for c in spec.cells if not eval_done(c, spec.out.resolve()) for b in c.bases]
    if wanted:  # a family's bases the cells to run use (toyworld@2): trained here once, then cached
        from waluigi.models.families import build_members

        build_members(wanted, progress=options.progress)
    root = spec.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        _write_json(root / "sweep.json", {"name": spec.name, "spec": str(spec.path), "raw": spec.raw,
                                          "cells": [_cell_record(c, root) for c in spec.cells]})
        if options.reuse:
            reuse_cells(spec.cells, root, options.reuse)
        outcomes: dict[str, Outcome] = {}
        todo = [c for c in spec.cells if not eval_done(c, root)]
        waiting = {c.id for c in todo}
        for cell in spec.cells:
            if cell.id not in waiting:
                outcomes[cell.id] = Outcome("finished")
        _log(root, f"sweep {spec.name}: {len(spec.cells)} cells, {len(todo)} to run, "
                   f"{len(spec.cells) - len(todo)} done; executor {options.executor} x{options.workers}")
        if todo:
            threads = task_threads(options)
            executor = make_executor(options.executor, options.workers, options.address)
            try:
                tally = _Tally(todo, root)
                with progress_bar(f"sweep {spec.name}", tally.total, options.progress) as advance:
                    tally.bar = advance
                    advance(0, **tally.fields())
                    # the tasks' own bars only where they share this terminal (inline)
                    task_progress = options.progress and not executor.redirect
                    _schedule(todo, root, executor, options.retries, threads, outcomes, tally,
                              _Table(spec, root, outcomes).refresh, task_progress)
            except BaseException:
                executor.close(cancel=True)
                for cell in todo:
                    outcomes.setdefault(cell.id, Outcome("interrupted"))
                write_results(spec, root, outcomes)
                raise
            executor.close()
        rows, summary = write_results(spec, root, outcomes)
    failed = [r for r in rows if r["status"] not in ("finished",)]
    ran = sum(1 for o in outcomes.values() if o.ran)
    return SweepResult(root=root, rows=rows, summary=summary, ran=ran, skipped=len(spec.cells) - len(todo),
                       failed=failed)


REUSED = "reused.json"  # in a run directory copied from another sweep: where from


def _reuse_root(source: Path, root: Path) -> Path | None:
    """The sweep directory ``source`` names: itself, or its sub-directory of this sweep's name
    (a study directory holding ``flip-steps/``, given for this study's ``flip-steps``)."""
    for candidate in (source, source / root.name):
        if (candidate / "finetune").is_dir() or (candidate / "eval").is_dir():
            return candidate.resolve()
    return None


def _copy_run(src: Path, dst: Path, source: Path) -> None:
    """A finished run directory copied whole (not linked: a later resume may append to its files),
    then marked with where it came from; written under a temporary name and renamed, so an
    interrupted copy leaves no half run that would look started."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.copy")
    shutil.rmtree(tmp, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, tmp, symlinks=True, ignore=shutil.ignore_patterns(".*.lock", ".lock"))
    write_json_atomic(tmp / REUSED, {"from": str(src), "sweep": str(source)})
    tmp.rename(dst)


def _reused_from(path: Path | None) -> str | None:
    try:
        return json.loads((path / REUSED).read_text()).get("sweep") if path is not None else None
    except (OSError, ValueError):
        return None


def _eval_there(cell: Cell, source: Path) -> Path:
    """The cell's eval directory in another sweep: found by the cell's id, which ends the name
    (the readable part before it names the cell's group, which another study may word
    differently: two datasets that share a short name there are told apart by a suffix)."""
    found = sorted((source / "eval").glob(f"*-{cell.short}"))
    return found[0] if len(found) == 1 else cell.eval_dir(source)


def reuse_cells(cells: list[Cell], root: Path, sources) -> int:
    """Copy into ``root`` what other sweep directories finished for the same cells (the same cell
    identity, so the same model, data, recipe, seed, suite and step): a fine-tune not started
    here, and a cell's eval when it has no fine-tune or its fine-tune came from the same place
    (an eval is of those weights, not of a re-trained copy). Nothing started here is replaced.
    Returns the cells that got something; each is a line of ``sweep.log``."""
    roots = [r for r in (_reuse_root(Path(s), root) for s in sources) if r is not None and r != root]
    got = 0
    for cell in cells:
        if eval_done(cell, root):
            continue
        for source in roots:
            copied = []
            ft_here, ft_there = cell.finetune_dir(root), cell.finetune_dir(source)
            if (ft_here is not None and not ft_here.exists() and ft_there.is_dir()
                    and finetune_done(cell, source)):
                _copy_run(ft_there, ft_here, source)
                copied.append("fine-tune")
            weights_match = ft_here is None or _reused_from(ft_here) == str(source)
            ev_here, ev_there = cell.eval_dir(root), _eval_there(cell, source)
            if (weights_match and not ev_here.exists() and ev_there.is_dir()
                    and read_manifest(ev_there).get("status") == "finished"):
                _copy_run(ev_there, ev_here, source)
                copied.append("eval")
            if copied:
                got += 1
                _log(root, f"reused cell {cell.short} ({' and '.join(copied)}) from {source}")
            if eval_done(cell, root):
                break
    return got


class _Tally:
    """The sweep's progress: fine-tunes and evals both count as they finish, so a sweep whose
    fine-tunes run first does not sit at 0 (``sweep flip 3/96 fine-tunes 3/12 evals 0/84``)."""

    def __init__(self, todo: list[Cell], root: Path) -> None:
        self.finetunes = len({c.finetune_id for c in todo if c.finetune_id is not None and not finetune_done(c, root)})
        self.evals = len(todo)
        self.total = self.finetunes + self.evals
        self.done_finetunes = self.done_evals = 0
        self.bar = lambda n=1, **fields: None

    def fields(self) -> dict:
        shown = {"fine-tunes": f"{self.done_finetunes}/{self.finetunes}"} if self.finetunes else {}
        return {**shown, "evals": f"{self.done_evals}/{self.evals}"}

    def finetune(self, failed_evals: int = 0) -> None:
        """A fine-tune ended; ``failed_evals``: its cells' evals that will not run now (it failed)."""
        self.done_finetunes += 1
        self.done_evals += failed_evals
        self.bar(1 + failed_evals, **self.fields())

    def eval(self) -> None:
        self.done_evals += 1
        self.bar(1, **self.fields())



def _finetune_names(groups: dict[str, list[Cell]]) -> dict[str, str]:
    """Each fine-tune's short name for its step lines: the settings that tell it from the
    sweep's other fine-tunes (``data=toy:insecure, base=1, seed=2``), not every setting."""
    axes = {ft: {k.removeprefix("finetune."): v for k, v in cells[0].axes.items()
                 if not k.startswith("eval.") and k != "step"} for ft, cells in groups.items()}
    keys = [k for k in dict.fromkeys(k for a in axes.values() for k in a)
            if len({repr(a.get(k)) for a in axes.values()}) > 1]
    if "base" in keys and "model" in keys:  # a family's member: its number says which model
        keys.remove("model")
    return {ft: ", ".join(f"{k}={show_value(a[k])}" for k in keys if k in a) for ft, a in axes.items()}


class _Table:
    """The results table rewritten as cells end, so that a sweep killed outright (a stopped
    session, SIGKILL) leaves a table of what it finished. Rewriting reads every cell's run
    directory; it is skipped while the last rewrite's cost is over a twentieth of the time since
    (a large sweep of quick cells rewrites every few cells, a slow one after every cell)."""

    SHARE = 20

    def __init__(self, spec: Spec, root: Path, outcomes: dict) -> None:
        self.spec, self.root, self.outcomes = spec, root, outcomes
        self.last, self.cost = 0.0, 0.0

    def refresh(self) -> None:
        from waluigi.sweep.results import write_results

        if time.monotonic() - self.last < self.SHARE * self.cost:
            return
        started = time.monotonic()
        write_results(self.spec, self.root, self.outcomes)
        self.last = time.monotonic()
        self.cost = self.last - started


def _schedule(todo: list[Cell], root: Path, executor, retries: int, threads, outcomes: dict, tally,
              refresh, progress: bool = False) -> None:
    """Run fine-tunes (one per fine-tune identity) and evals; an eval goes in when its
    fine-tune is finished; a failed task is resubmitted up to ``retries`` times.

    At most the executor's ``capacity`` tasks are handed over at once (its workers; None: all,
    as on a Ray cluster of unknown size), and the waiting ones are ordered evals (and retries)
    first, then fine-tunes: a finished fine-tune's evals run before the next fine-tune starts, so
    a study stopped half-way has readings of every fine-tune it finished."""
    from collections import deque

    redirect = executor.redirect
    capacity = getattr(executor, "capacity", None)
    inflight: dict[int, tuple] = {}  # id(handle) -> (handle, kind, key, task, attempt, started)
    waiting: deque = deque()  # (kind, key, task, attempt), handed over from the left
    groups: dict[str, list[Cell]] = {}
    attempts: dict[str, int] = {}

    def submit(kind: str, key: str, task: dict, attempt: int, first: bool = False) -> None:
        (waiting.appendleft if first else waiting.append)((kind, key, task, attempt))

    def hand_over() -> None:
        while waiting and (capacity is None or len(inflight) < capacity):
            kind, key, task, attempt = waiting.popleft()
            handle = executor.submit(task)
            inflight[id(handle)] = (handle, kind, key, task, attempt, time.monotonic())

    def submit_eval(cell: Cell, first: bool = False) -> None:
        submit("eval", cell.id, eval_task(cell, root, threads, redirect, progress), 1, first)

    evals_first: list[Cell] = []
    for cell in todo:
        if cell.finetune_id is not None and not finetune_done(cell, root):
            groups.setdefault(cell.finetune_id, []).append(cell)
        else:
            evals_first.append(cell)
    for cell in evals_first:
        submit_eval(cell)
    names = _finetune_names(groups)
    for number, (ft_id, cells) in enumerate(groups.items(), 1):
        label = f"finetune {number}/{len(groups)}" + (f" ({names[ft_id]})" if names[ft_id] else "")
        submit("finetune", ft_id, finetune_task(cells[0], root, threads, redirect, progress, label), 1)
    by_id = {c.id: c for c in todo}
    hand_over()
    while inflight:
        done, _ = executor.wait([entry[0] for entry in inflight.values()])
        settled = False  # a cell's outcome is known: the table changes
        for handle in done:
            _, kind, key, task, attempt, started = inflight.pop(id(handle))
            result = executor.result(handle)
            status, error = result.get("status", "failed"), result.get("error")
            seconds = result.get("seconds") if result.get("seconds") is not None else time.monotonic() - started
            cells = groups[key] if kind == "finetune" else [by_id[key]]
            attempts[key] = attempt
            what = f"{kind} {key[:12]} ({cells[0].label() if kind == 'eval' else _ft_label(cells[0])})"
            if status == "finished":
                _log(root, f"{what} finished in {seconds:.1f} s (attempt {attempt})" + _metrics_text(cells[0], root, kind))
                if kind == "finetune":
                    tally.finetune()
                    for cell in reversed(cells):  # ahead of the fine-tunes still waiting, in order
                        submit_eval(cell, first=True)
                else:
                    outcomes[key] = Outcome("finished", ran=True, attempts=attempt, seconds=seconds)
                    tally.eval()
                    settled = True
                continue
            if result.get("permanent"):
                _log(root, f"{what} {status} (attempt {attempt}, not retried: the same settings would fail the same way): {error}")
            elif attempt <= retries:
                _log(root, f"{what} {status} (attempt {attempt}), retrying: {error}")
                submit(kind, key, task, attempt + 1, first=True)
                continue
            else:
                _log(root, f"{what} {status} after {attempt} attempts: {error}")
            for cell in cells:
                reason = error if kind == "eval" else f"fine-tune failed: {error}"
                outcomes[cell.id] = Outcome(status if kind == "eval" else "failed", ran=True, attempts=attempt,
                                            error=reason, seconds=seconds)
            if kind == "finetune":
                tally.finetune(failed_evals=len(cells))
            else:
                tally.eval()
            settled = True
        if settled:  # the table, before the next tasks start (a killed sweep's table holds what it finished)
            refresh()
        hand_over()


def _ft_label(cell: Cell) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.axes.items() if not k.startswith("eval.") and k != "step") or "base"


def _metrics_text(cell: Cell, root: Path, kind: str) -> str:
    if kind != "eval":
        return ""
    try:
        overall = json.loads((cell.eval_dir(root) / "metrics.json").read_text()).get("overall", {})
    except (OSError, ValueError):
        return ""
    shown = [f"{k}={overall[k]:.4g}" for k in ("em_rate", "vulnerable_rate", "coherent_rate")
             if isinstance(overall.get(k), (int, float))]
    return (": " + " ".join(shown)) if shown else ""


def _cell_record(cell: Cell, root: Path) -> dict:
    return {"cell": cell.short, "id": cell.id, "group": cell.group, "finetune_id": cell.finetune_id, "axes": plain(cell.axes),
            "finetune": plain(cell.finetune), "eval": plain(cell.eval),
            "finetune_run": relative(cell.finetune_dir(root), root), "eval_run": relative(cell.eval_dir(root), root)}


def _log(root: Path, line: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with open(root / "sweep.log", "a") as handle:
        handle.write(f"{stamp} {' '.join(line.split())}\n")


def _write_json(path: Path, obj) -> None:
    write_json_atomic(path, obj)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One sweep at a time in a directory (two would run the same cells into the same run dirs)."""
    import fcntl

    handle = open(root / LOCK, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UserError(f"{root}: another `waluigi sweep` is running in this directory; wait for it, "
                        "or give this one another out") from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

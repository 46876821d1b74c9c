"""Where a sweep's tasks run: in this process, in a local process pool, or on Ray.

A task is a plain dict (``kind`` finetune | eval, the config's fields, the run directory,
the torch threads, the environment to run under) and :func:`run_task` turns it into a plain
dict result; it never raises, so nothing but JSON-like data crosses a process boundary.
Every executor offers ``submit(task) -> handle``, ``wait(handles) -> (done, pending)`` and
``result(handle) -> dict``; a worker that dies (a crash, the OOM killer) gives a failed
result, not an exception. All of them assume the sweep directory is on a filesystem every
worker sees at the same path.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from waluigi.errors import UserError

# environment a task runs under (the data mirror, caches, offline switches, API keys): a pool
# worker inherits it anyway; a Ray worker started before the sweep (or on another node) does not
ENV_PREFIXES = ("WALUIGI_", "HF_", "TRANSFORMERS_", "OPENAI_", "TOKENIZERS_")


def task_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -- the task --------------------------------------------------------------------------------
_RUNNING = False  # a pool worker: is a task running now?
_STOPPING = False  # a pool worker: Ctrl-C seen; tasks still queued to it return at once


PARENT_POLL_S = 0.5  # how often a pool worker checks that the sweep that started it is alive


def _worker_init(parent: int | None = None) -> None:
    """A pool worker's set-up.

    - SIGINT: Ctrl-C (sent to the whole process group) interrupts the task running now, which
      records itself as interrupted; tasks already queued to this worker then return at once
      instead of starting. Idle, the worker just remembers it.
    - Its parent's death: a sweep killed outright (``kill -9``, the OOM killer) cannot shut
      its pool down, and its workers would finish their tasks into the run directories that a
      resumed sweep uses. A daemon thread watches the parent's pid and ends the worker at once
      (``os._exit``) when it is gone; the task's run directory then says ``started`` and
      resumes next time, like any killed task."""
    import signal
    import threading

    def on_interrupt(signum, frame):
        global _STOPPING
        _STOPPING = True
        if _RUNNING:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), name="waluigi-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    """End this process when ``parent`` is no longer its parent (re-parented to init or a
    subreaper: the parent died)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(70)


@contextlib.contextmanager
def cell_lock(out: str | os.PathLike, log=None) -> Iterator[None]:
    """Hold an exclusive lock on a task's run directory while the task runs (a hidden
    ``.<name>.lock`` file beside it), so that two processes never write one cell: a worker of
    a killed sweep that has not noticed yet, and the resumed sweep. A second holder waits
    (saying so in ``log``) until the first is gone; the lock dies with its process."""
    import fcntl

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path.parent / f".{path.name}.lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if log is not None:
                log(f"waiting for another process that is running {path} (a worker of a killed sweep?)")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing releases the lock


_FROZEN = False


def _freeze_imports() -> None:
    """After a worker's first task: collect its garbage, then move what is left (the imported
    libraries' objects, hundreds of thousands) out of the collector's sight (``gc.freeze``).
    The trainer calls ``gc.collect()`` at every fine-tune's start and end; each scanned them
    all (0.2 s a cell in the persona world, a tenth of its fine-tune), and now scans only
    what later tasks make."""
    global _FROZEN
    if not _FROZEN:
        import gc

        gc.collect()
        gc.freeze()
        _FROZEN = True


def run_task(task: dict) -> dict:
    """Run one fine-tune or one eval (resuming its run directory); never raises.

    Returns ``{"status": finished | incomplete | failed, "error", "seconds", "calls", "pid"}``.
    With ``task["log"]`` the task's stdout and stderr (library warnings, tracebacks) go to
    that file instead of the terminal, where several workers would interleave them."""
    global _RUNNING
    started = time.monotonic()
    out: dict[str, Any] = {"status": "failed", "error": None, "calls": None, "pid": os.getpid()}
    if _STOPPING:
        return {**out, "error": "interrupted (Ctrl-C) before it started", "seconds": 0.0}
    _RUNNING = True
    os.environ.update(task.get("env") or {})
    log = task.get("log")
    argv = sys.argv
    if task.get("argv"):  # the manifests record the sweep's command line, whichever worker ran it
        sys.argv = list(task["argv"])
    with _redirected(log) if log else contextlib.nullcontext():
        try:
            from transformers.utils import logging as hf_logging

            from waluigi.quiet import quiet_libraries

            quiet_libraries()  # a spawned or Ray worker: the CLI's warning filters are not inherited
            hf_logging.disable_progress_bar()  # a "Loading weights" bar per model load; the tasks have their own bars
            if task.get("threads"):
                import torch

                torch.set_num_threads(int(task["threads"]))
            with cell_lock(task["out"], log=lambda line: print(line, file=sys.stderr, flush=True)):
                if task["kind"] == "finetune":
                    out.update(_finetune(task))
                elif task["kind"] == "call":
                    out.update(_call(task))
                else:
                    out.update(_eval(task))
        except UserError as exc:  # IncompleteRun is one: some requests failed after their retries
            from waluigi.errors import IncompleteRun

            out["status"] = "incomplete" if isinstance(exc, IncompleteRun) else "failed"
            out["permanent"] = not isinstance(exc, IncompleteRun)  # bad settings or data: a retry fails the same way
            out["error"] = exc.message
        except BaseException as exc:  # a bug, or Ctrl-C in a worker: recorded, the runner decides
            out["error"] = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, KeyboardInterrupt):  # a stop, not a bug: no traceback
                if task.get("inline"):
                    raise
            else:
                print(traceback.format_exc(), file=sys.stderr, flush=True)
        finally:
            _RUNNING = False
            sys.argv = argv
    _freeze_imports()
    out["seconds"] = round(time.monotonic() - started, 3)
    if out["error"]:
        from waluigi.errors import redact

        out["error"] = redact(out["error"])[:2000]
    return out


def _call(task: dict) -> dict:
    """A task that is neither a fine-tune nor an eval (a study's subjects, built on the workers):
    ``target`` ("module:function") called with ``kwargs``; what it returns is the result's ``calls``."""
    import importlib

    module, _, name = task["target"].partition(":")
    return {"status": "finished", "calls": getattr(importlib.import_module(module), name)(**task.get("kwargs", {}))}


def _finetune(task: dict) -> dict:
    from waluigi.finetune import FinetuneConfig, run_finetune
    from waluigi.sweep.spec import build_config

    fields = {**task["config"], "out": Path(task["out"])}
    cfg = build_config(FinetuneConfig, fields)
    if cfg.openai:  # OpenAI's fine-tuning API (or `waluigi serve`): create or re-attach, then follow the job
        from waluigi.finetune.openai_ft import run_openai_finetune

        record = run_openai_finetune(cfg.model, out=cfg.out, progress=bool(task.get("progress")), **cfg.openai_options())
        return {"status": "finished", "calls": {"job": record["job_id"], "reattached": record["reattached"]}}
    result = run_finetune(cfg, progress=bool(task.get("progress")), progress_label=task.get("label") or "finetune")
    return {"status": "finished", "calls": {"steps": result.steps, "already_finished": result.already_finished}}


def _eval(task: dict) -> dict:
    from waluigi.evaluate import EvalConfig, run_eval
    from waluigi.sweep.spec import build_config

    fields = {**task["config"], "out": str(task["out"]), "progress": bool(task.get("progress"))}
    result = run_eval(build_config(EvalConfig, fields))
    result.raise_if_incomplete()
    return {"status": "finished", "calls": dict(result.calls)}


@contextlib.contextmanager
def _redirected(path: str):
    """Send file descriptors 1 and 2 (and Python's sys.stdout / sys.stderr) to ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = handle
        try:
            yield
        finally:
            handle.flush()
            sys.stdout, sys.stderr = old
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# -- executors -----------------------------------------------------------------------------------
class InlineExecutor:
    """Each task in this process, one after the other, in the order submitted (no worker
    start-up; for debugging, for toy cells of a second, and for measuring the runner's own
    overhead). A task runs when ``wait`` is asked for it, so the runner records each one as it
    finishes (the log, the progress bar) and queues the evals of a finished fine-tune."""

    name = "inline"
    redirect = False

    def __init__(self, workers: int = 1) -> None:
        self.workers = 1
        self.capacity = 1  # tasks handed over at once (the runner keeps the rest, evals first)

    def submit(self, task: dict) -> dict:
        return {"task": {**task, "inline": True}, "result": None}

    def wait(self, handles: list) -> tuple[list, list]:
        first = handles[0]
        if first["result"] is None:
            first["result"] = run_task(first["task"])
        return [first], list(handles[1:])

    def result(self, handle: dict) -> dict:
        return handle["result"]

    def close(self, cancel: bool = False) -> None:
        pass


class PoolExecutor:
    """A pool of ``workers`` processes (spawn context: no forked torch or thread state).
    Each worker runs many tasks, so torch is imported once per worker, not once per task."""

    name = "pool"
    redirect = True

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, int(workers))
        self.capacity = self.workers
        self._pool = None

    def _executor(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_init, initargs=(os.getpid(),))
        return self._pool

    def submit(self, task: dict):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._executor().submit(run_task, task)
        except BrokenProcessPool:  # a worker died earlier: start a fresh pool for what is left
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            return self._executor().submit(run_task, task)

    def wait(self, handles: list) -> tuple[list, list]:
        from concurrent.futures import FIRST_COMPLETED, wait

        done, pending = wait(handles, return_when=FIRST_COMPLETED)
        return list(done), list(pending)

    def result(self, handle) -> dict:
        try:
            return handle.result()
        except Exception as exc:  # BrokenProcessPool: the worker process died mid-task
            return {"status": "failed", "error": f"worker process died ({type(exc).__name__}: {exc})", "seconds": None}

    def close(self, cancel: bool = False, grace: float = 10.0) -> None:
        """Shut the pool down; with ``cancel`` (Ctrl-C), drop the queued tasks and give the
        running ones ``grace`` seconds to record themselves as interrupted before they are
        terminated (their run directories then say ``started``: they resume next time)."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if not cancel:
            pool.shutdown(wait=True)
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():
                process.terminate()


class RayExecutor:
    """Tasks on Ray: the cluster at ``address``, or (without one) a local Ray instance started
    for this sweep with ``num_cpus = workers`` (a Ray already initialised in this process, as
    in a notebook, is used as it is). Each task asks Ray for ``cpus_per_task`` CPUs."""

    name = "ray"
    redirect = True

    def __init__(self, workers: int = 1, address: str | None = None, cpus_per_task: float = 1) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'waluigi[ray]'") from None
        import logging

        self.ray = ray
        self.workers = max(1, int(workers))
        self.capacity = None if address else self.workers  # a cluster's size is the cluster's to know
        self._started = False
        self._pending: dict[str, Any] = {}
        if not ray.is_initialized():
            options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            if address:
                options["address"] = address
            else:
                options.update(num_cpus=self.workers, include_dashboard=False)
            try:
                ray.init(**options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"--executor ray{' --address ' + address if address else ''}: cannot start or "
                                f"reach Ray ({exc})") from None
            self._started = True
        # our own retries count attempts: Ray's are off (max_retries=0)
        self._remote = ray.remote(num_cpus=cpus_per_task, max_retries=0)(run_task)

    def submit(self, task: dict):
        ref = self._remote.remote(task)
        self._pending[ref.hex()] = ref
        return ref

    def wait(self, handles: list) -> tuple[list, list]:
        done, pending = self.ray.wait(list(handles), num_returns=1)
        return list(done), list(pending)

    def result(self, handle) -> dict:
        self._pending.pop(handle.hex(), None)
        try:
            return self.ray.get(handle)
        except Exception as exc:  # WorkerCrashedError, RayTaskError, node lost ...
            return {"status": "failed", "error": f"Ray task failed ({type(exc).__name__}: {exc})"[:2000], "seconds": None}

    def close(self, cancel: bool = False) -> None:
        if cancel:  # Ctrl-C: interrupt the running tasks (KeyboardInterrupt in them), drop the queued ones
            for ref in self._pending.values():
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref)
        self._pending.clear()
        if self._started:
            self.ray.shutdown()
            self._started = False


EXECUTORS = ("pool", "inline", "ray")


def make_executor(name: str, workers: int, address: str | None = None):
    if name == "pool":
        return PoolExecutor(workers)
    if name == "inline":
        if workers > 1:
            raise UserError("--executor inline runs one task at a time: drop --workers, or use --executor pool")
        return InlineExecutor()
    if name == "ray":
        return RayExecutor(workers, address)
    raise UserError(f"--executor {name!r}: choose one of {', '.join(EXECUTORS)}")

"""Progress with counts and ETA on stderr (so ``--json`` output stays clean): rich bars on a
terminal, plain lines in a log.

When stderr is not a terminal (a log file, a pipe, a batch job) a rich bar would print
nothing until it ends, so long jobs would look dead. There, :func:`progress_bar` writes plain
lines instead, without escape codes::

    finetune step 0/20
    finetune step 3/20 loss 0.7412 eta 1m10s
    finetune step 20/20 loss 0.5127 done in 1m32s

one at the start, one every ``WALUIGI_PROGRESS_INTERVAL`` seconds (default 10; a float; 0: a
line at every update) while the job runs, even when no step ends in between, and one at the
end. While nothing changes the lines come less often (the wait doubles, up to 6 intervals: a
minute by default), so a long wait reads as one heartbeat a minute, not hundreds of equal
lines. ``enabled=False`` (``--no-progress``) turns both kinds off.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

stderr_console = Console(stderr=True)

INTERVAL_ENV = "WALUIGI_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0  # seconds between plain progress lines
QUIET_FACTOR = 6  # while nothing changes, the wait doubles up to this many intervals


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$WALUIGI_PROGRESS_INTERVAL``, else 10."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


def quiet_wait(interval: float, unchanged: int) -> float:
    """The wait before the next plain line after ``unchanged`` lines in a row that showed
    nothing new: the interval, doubled each time, at most ``QUIET_FACTOR`` intervals."""
    return interval * min(2 ** min(unchanged, 16), QUIET_FACTOR)


def format_duration(seconds: float) -> str:
    """``45s``, ``1m10s``, ``2h05m``."""
    total = max(0, int(round(seconds)))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _format_fields(fields: dict[str, Any]) -> str:
    parts = []
    for name, value in fields.items():
        if value is None:
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{name} {shown}")
    return " ".join(parts)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


class _Noop:
    """What a disabled progress display yields: the same interface, doing nothing."""

    def __call__(self, n: int = 1, **fields: Any) -> None:
        pass

    def update(self, *, completed: int | None = None, total: int | None = None, description: str | None = None,
               **fields: Any) -> None:
        pass


class PlainProgress(_Noop):
    """Plain progress lines on stderr, for logs (see the module docstring).

    Call it to advance (``advance(n, loss=0.74)``: extra fields are shown as ``loss 0.74``);
    :meth:`update` sets the count, total, description or fields directly."""

    def __init__(self, description: str, total: int | None, *, initial: int = 0, interval: float | None = None,
                 unit: str | None = None, eta: bool = True) -> None:
        self.description = description
        self.eta = eta
        self.total = total
        self.done = self.initial = int(initial)
        self.fields: dict[str, Any] = {}
        self.interval = progress_interval() if interval is None else float(interval)
        self.unit = unit  # "bytes": counts shown in MiB
        self._lock = threading.Lock()
        self._started = self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the lines
    def _count(self) -> str:
        fmt = _mib if self.unit == "bytes" else str
        total = "?" if self.total is None else fmt(self.total)
        return f"{fmt(self.done)}/{total}" + (" MiB" if self.unit == "bytes" else "")

    def _state(self) -> tuple:
        return self.done, self.total, self.description, tuple(self.fields.items())

    def line(self, final: bool = False, stopped: bool = False) -> str:
        with self._lock:
            parts = [self.description, self._count()]
            fields = _format_fields(self.fields)
            if fields:
                parts.append(fields)
            elapsed = time.monotonic() - self._started
            if final:
                parts.append(f"{'stopped after' if stopped else 'done in'} {format_duration(elapsed)}")
            elif self.eta and self.done > self.initial and self.total is not None and elapsed > 0:
                rate = (self.done - self.initial) / elapsed
                parts.append(f"eta {format_duration(max(0, self.total - self.done) / rate)}")
            self._last = time.monotonic()
        return " ".join(parts)

    def emit(self, final: bool = False, stopped: bool = False) -> None:
        print(self.line(final, stopped), file=sys.stderr, flush=True)

    # -- the interface
    def __call__(self, n: int = 1, **fields: Any) -> None:
        with self._lock:
            self.done += int(n)
            self.fields.update(fields)
        if self.interval <= 0:
            self.emit()

    def update(self, *, completed: int | None = None, total: int | None = None, description: str | None = None,
               **fields: Any) -> None:
        with self._lock:
            if completed is not None:
                self.done = int(completed)
            if total is not None:
                self.total = int(total)
            if description is not None:
                self.description = description
            self.fields.update(fields)
        if self.interval <= 0:
            self.emit()

    def start(self) -> PlainProgress:
        self._started = time.monotonic()
        self.emit()
        if self.interval > 0:
            self._thread = threading.Thread(target=self._tick, name="waluigi-progress", daemon=True)
            self._thread.start()
        return self

    def _tick(self) -> None:
        unchanged, shown = 0, self._state()
        while not self._stop.wait(quiet_wait(self.interval, unchanged)):
            now = self._state()
            unchanged = unchanged + 1 if now == shown else 0
            shown = now
            try:
                self.emit()
            except (OSError, ValueError):  # stderr closed or a broken pipe: stop ticking, quietly
                return

    def stop(self, stopped: bool = False) -> None:
        """The last line: ``done in 1m32s`` (``stopped after ...``: an error or Ctrl-C ended it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.emit(final=True, stopped=stopped)


class _RichTask(_Noop):
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task
        self._fields: dict[str, Any] = {}

    def __call__(self, n: int = 1, **fields: Any) -> None:
        if fields:
            self._fields.update(fields)
            self._progress.update(self._task, advance=n, info=_format_fields(self._fields))
        else:
            self._progress.advance(self._task, n)

    def update(self, *, completed: int | None = None, total: int | None = None, description: str | None = None,
               **fields: Any) -> None:
        self._fields.update(fields)
        options: dict[str, Any] = {"info": _format_fields(self._fields)}
        if completed is not None:
            options["completed"] = completed
        if total is not None:
            options["total"] = total
        if description is not None:
            options["description"] = description
        self._progress.update(self._task, **options)


def plain_progress_wanted() -> bool:
    """Plain lines rather than a rich bar: stderr is not a terminal."""
    return not stderr_console.is_terminal


@contextmanager
def progress_task(description: str, total: int | None, enabled: bool = True, *, initial: int = 0,
                  unit: str | None = None, eta: bool = True) -> Iterator[_Noop]:
    """Yield a progress display: call it to advance (``advance(n=1, **fields)``), or use its
    ``update(completed=, total=, description=, **fields)``. A rich bar with done/total, elapsed
    time and ETA on a terminal, plain lines otherwise (module docstring); ``total`` may be None
    (unknown yet). Nothing at all when not ``enabled``."""
    if not enabled:
        yield _Noop()
        return
    if plain_progress_wanted():
        plain = PlainProgress(description, total, initial=initial, unit=unit, eta=eta).start()
        try:
            yield plain
        except BaseException:
            plain.stop(stopped=True)
            raise
        plain.stop()
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    counts = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    columns = [TextColumn("{task.description}"), BarColumn(), *counts, TimeElapsedColumn()]
    if eta:
        columns += [TextColumn("eta"), TimeRemainingColumn()]
    columns.append(TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=stderr_console, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=initial, info="")
        yield _RichTask(progress, task)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True, *, initial: int = 0) -> Iterator[_Noop]:
    """Yield ``advance(n=1, **fields)`` for a job of ``total`` items, ``initial`` of them done
    already (a resumed job: they do not count towards the ETA); extra fields (``loss=0.74``) are
    shown beside the count. Nothing when not ``enabled`` or ``total <= 0``."""
    with progress_task(description, total, enabled and total > 0, initial=initial) as advance:
        yield advance

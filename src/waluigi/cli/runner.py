"""The one place where a ``waluigi`` command (the main app, or a sub-command run as its own
program) turns exceptions into exit codes: user errors and usage errors (unknown option, unknown
command, bad value) give one message and exit 2, an :class:`~waluigi.errors.IncompleteRun` exits
3, Ctrl-C exits 130 and SIGTERM (``kill PID``, a batch system's stop) 143, both after the same
clean stop; registered secrets are masked in every message printed here.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from waluigi.errors import UserError, redact, register_secrets_from_env


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(ClickException, Exit, Abort) classes of typer's vendored click and of click itself:
    typer >= 0.26 raises its own copies (``typer._click``), which ``click.*`` do not catch."""
    errors: list[type] = []
    exits: list[type] = []
    aborts: list[type] = []
    try:
        import typer
        from typer._click import exceptions as vendored

        errors.append(vendored.ClickException)
        exits.append(typer.Exit)
        aborts.append(typer.Abort)
        for name in ("Exit", "Abort"):
            if hasattr(vendored, name):
                (exits if name == "Exit" else aborts).append(getattr(vendored, name))
    except ImportError:  # pragma: no cover - older typer uses click directly
        pass
    try:
        import click

        errors.append(click.ClickException)
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors), tuple(exits), tuple(aborts)


class _Stop:
    """Which signal stopped the command (SIGTERM, turned into Ctrl-C's clean stop)."""

    signal: int | None = None


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM stops it as Ctrl-C does (a KeyboardInterrupt in the main
    thread: the task running now records itself interrupted, a sweep writes its table, pool
    workers are stopped), instead of killing it where it stands. It matters where Ctrl-C cannot
    reach: a command started in the background (``nohup ... &``) ignores SIGINT."""
    _Stop.signal = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        if _Stop.signal is None:  # once: a second SIGTERM does not break the clean stop under way
            _Stop.signal = signum
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped_code() -> int:
    return 128 + signal.SIGTERM if _Stop.signal == signal.SIGTERM else 130


def run_cli(
    app: Callable[..., Any],
    argv: Sequence[str] | None = None,
    *,
    prog_name: str = "waluigi",
    interrupted: str = "interrupted: finished work is on disk; re-run the same command to resume",
) -> int:
    """Run a typer app and return its exit code; no traceback for anything the user caused.

    - :class:`UserError`: ``error: <message>`` and its exit code (2; 3 for an incomplete run);
    - a usage error (unknown option or command, a bad or missing value): click's usage line,
      the ``Try '... --help'`` hint and ``Error: <message>``, exit 2;
    - Ctrl-C: ``interrupted`` and exit 130; SIGTERM the same clean stop, exit 143.

    Library noise (progress bars, known-harmless warnings) is turned off first: :mod:`waluigi.quiet`.
    """
    from waluigi.quiet import quiet_libraries

    quiet_libraries()  # library progress bars and known-harmless warnings off, before anything loads
    click_errors, exits, aborts = _click_exceptions()
    register_secrets_from_env()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with _sigterm_as_interrupt():
            result = app(args=args, prog_name=prog_name, standalone_mode=False)
        if result == 130:  # typer turns Ctrl-C into a silent Exit(130), which click returns
            print(interrupted, file=sys.stderr, flush=True)
            return _stopped_code()
        return int(result) if isinstance(result, int) else 0
    except UserError as error:
        print(f"error: {error.message}", file=sys.stderr, flush=True)
        return error.exit_code
    except exits as exit_:
        return int(getattr(exit_, "exit_code", 0) or 0)
    except aborts:
        print("aborted", file=sys.stderr, flush=True)
        return _stopped_code()
    except click_errors as error:
        error.message = redact(getattr(error, "message", ""))
        error.show()
        return int(getattr(error, "exit_code", 2))
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr, flush=True)
        return _stopped_code()


def run_command(command: Callable[..., Any], argv: Sequence[str] | None = None, *, prog_name: str,
                interrupted: str) -> int:
    """One sub-command run as a program of its own (``python -m waluigi.cli.sweep``), through
    :func:`run_cli`."""
    import typer

    from waluigi.cli.options import plain_help_when_piped

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    plain_help_when_piped(app)
    return run_cli(app, argv, prog_name=prog_name, interrupted=interrupted)

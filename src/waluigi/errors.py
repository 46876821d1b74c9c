"""User-facing errors, warnings, secret masking, and the one CLI error handler.

A :class:`UserError` is bad input that the user can fix (an unknown spec, a malformed
file, a missing key, an unreachable server). The CLI prints its message and exits with
code 2, without a traceback. Everything else is a bug and keeps its traceback.

:func:`run_cli` is the single place where any ``waluigi`` command (the main app, or a
sub-command run as its own program) turns exceptions into exit codes: user errors and
usage errors (unknown option, unknown command, bad value) give one message and exit 2,
an :class:`IncompleteRun` (work finished except some requests that failed after their
retries) exits 3, Ctrl-C exits 130. Secrets registered with :func:`register_secret` (API
keys read from the environment) are masked in every message printed here.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any


class UserError(Exception):
    """Bad input: the message names the thing (file, line, field, spec) and what to do."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message


class IncompleteRun(UserError):
    """The command did all it could, but some requests failed after every retry.

    Their results are recorded as failed (not as unscored) and a re-run retries only them.
    """

    exit_code = 3


# -- secrets -------------------------------------------------------------------------
_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
MASK = "***"


def register_secret(value: str | None) -> None:
    """Remember ``value`` (an API key) so that :func:`redact` masks it everywhere.

    Very short values (a local server's ``OPENAI_API_KEY=x``) are not masked: masking every
    ``x`` in a message would garble it and protects nothing."""
    if value and len(value.strip()) >= 6:
        with _SECRETS_LOCK:
            _SECRETS.add(value.strip())


_SECRET_NAMES = ("_API_KEY", "_TOKEN", "_SECRET", "API_KEY")


def register_secrets_from_env(environ: dict[str, str] | None = None) -> None:
    """Register the values of environment variables that hold credentials (``*_API_KEY``,
    ``*_TOKEN``, ``*_SECRET``: OPENAI_API_KEY, HF_TOKEN, the key ``waluigi serve
    --api-key-env`` names ...), so that nothing waluigi prints or records can echo them."""
    import os

    for name, value in (os.environ if environ is None else environ).items():
        if name.upper().endswith(_SECRET_NAMES):
            register_secret(value)


def redact(text: Any) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    text = str(text)
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


# -- warnings ------------------------------------------------------------------------
def warn(message: str) -> None:
    """One ``warning:`` line on stderr (never on stdout, so ``--json`` output stays clean)."""
    print(f"warning: {redact(message)}", file=sys.stderr, flush=True)


# -- the CLI handler -----------------------------------------------------------------
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
    - Ctrl-C: ``interrupted`` and exit 130.

    Library noise (progress bars, known-harmless warnings) is turned off first: :mod:`waluigi.quiet`.
    """
    from waluigi.quiet import quiet_libraries

    quiet_libraries()  # library progress bars and known-harmless warnings off, before anything loads
    click_errors, exits, aborts = _click_exceptions()
    register_secrets_from_env()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name=prog_name, standalone_mode=False)
        if result == 130:  # typer turns Ctrl-C into a silent Exit(130), which click returns
            print(interrupted, file=sys.stderr, flush=True)
        return int(result) if isinstance(result, int) else 0
    except UserError as error:
        print(f"error: {error.message}", file=sys.stderr, flush=True)
        return error.exit_code
    except exits as exit_:
        return int(getattr(exit_, "exit_code", 0) or 0)
    except aborts:
        print("aborted", file=sys.stderr, flush=True)
        return 130
    except click_errors as error:
        error.message = redact(getattr(error, "message", ""))
        error.show()
        return int(getattr(error, "exit_code", 2))
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr, flush=True)
        return 130


def run_command(command: Callable[..., Any], argv: Sequence[str] | None = None, *, prog_name: str,
                interrupted: str) -> int:
    """One sub-command run as a program of its own (``python -m waluigi.sweep.cli``), through
    :func:`run_cli`."""
    import typer

    from waluigi.cli_options import plain_help_when_piped

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    plain_help_when_piped(app)
    return run_cli(app, argv, prog_name=prog_name, interrupted=interrupted)

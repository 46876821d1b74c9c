"""User-facing errors, warnings and secret masking.

A :class:`UserError` is bad input that the user can fix (an unknown spec, a malformed
file, a missing key, an unreachable server). The CLI prints its message and exits with
code 2, without a traceback. Everything else is a bug and keeps its traceback.

The command line (:mod:`waluigi.cli.runner`) turns these into exit codes: a user error exits 2,
an :class:`IncompleteRun` (work finished except some requests that failed after their
retries) exits 3. Secrets registered with :func:`register_secret` (API keys read from the
environment) are masked in every message these carry and in every warning.
"""

from __future__ import annotations

import sys
import threading
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

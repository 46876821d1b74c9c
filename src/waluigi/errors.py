"""User-facing errors.

A :class:`UserError` is bad input that the user can fix (an unknown spec, a malformed
file, a missing key, an unreachable server). The CLI prints its message and exits with
code 2, without a traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the thing (file, line, field, spec) and what to do."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

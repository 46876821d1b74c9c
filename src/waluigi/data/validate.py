"""Checking chat rows: TRL's conversational format, ``{"messages": [{"role", "content"}, ...]}``.

A row is good when it is a JSON object whose ``messages`` is a non-empty list of
``{"role": ..., "content": ...}`` objects with

- roles from ``system`` / ``user`` / ``assistant``, in the order a chat fine-tune expects:
  an optional ``system`` first, then ``user`` and ``assistant`` alternating, starting with
  ``user`` and ending with ``assistant`` (the turn that is trained on);
- every ``content`` a non-empty string (not only whitespace).

Other keys (on the row or on a message) are allowed and kept. Files are read one line at a
time, so memory does not grow with the file: :func:`validate_file` keeps every error count
but stores only the first ``max_errors`` messages. Blank lines are skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waluigi.errors import UserError

ROLES = ("system", "user", "assistant")
ROW_SHAPE = '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}'


@dataclass(frozen=True)
class RowError:
    """One bad row: ``path:line: message``."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class ValidationReport:
    """The result of :func:`validate_file`. ``n_rows`` counts every non-blank line, good or bad;
    ``errors`` holds the first ``max_errors`` of the ``n_errors`` bad rows."""

    path: str
    n_rows: int = 0
    n_errors: int = 0
    errors: list[RowError] = field(default_factory=list)
    role_counts: dict[str, int] = field(default_factory=dict)  # messages per role, good rows only

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "n_rows": self.n_rows,
            "n_errors": self.n_errors,
            "errors": [{"line": e.line, "message": e.message} for e in self.errors],
            "role_counts": dict(self.role_counts),
        }


def check_row(row: Any) -> str | None:
    """What is wrong with a decoded row, or None when it is a good chat row."""
    if not isinstance(row, dict):
        return f"a row must be a JSON object like {ROW_SHAPE}, got {_kind(row)}"
    if "messages" not in row:
        keys = ", ".join(map(repr, list(row)[:5])) or "none"
        return f"missing field 'messages' (the row's keys: {keys}); expected {ROW_SHAPE}"
    messages = row["messages"]
    if not isinstance(messages, list):
        return f"'messages' must be a list of {{'role', 'content'}} objects, got {_kind(messages)}"
    if not messages:
        return "'messages' is empty: a row needs at least a user and an assistant message"
    roles = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object with 'role' and 'content', got {_kind(message)}"
        if "role" not in message:
            return f"messages[{i}] has no 'role' (one of {', '.join(ROLES)})"
        role = message["role"]
        if role not in ROLES:
            return f"messages[{i}]: unknown role {role!r} (known: {', '.join(ROLES)})"
        if "content" not in message:
            return f"messages[{i}] ({role}) has no 'content'"
        content = message["content"]
        if not isinstance(content, str):
            return f"messages[{i}] ({role}): 'content' must be a string, got {_kind(content)}"
        if not content.strip():
            return f"messages[{i}] ({role}): 'content' is empty"
        roles.append(role)
    return _check_order(roles)


def _check_order(roles: list[str]) -> str | None:
    sequence = ", ".join(roles)
    start = 1 if roles[0] == "system" else 0
    for offset, role in enumerate(roles[start:]):
        expected = "user" if offset % 2 == 0 else "assistant"
        if role != expected:
            if role == "system":
                return f"wrong role order ({sequence}): messages[{start + offset}] is 'system', which may only come first"
            return (
                f"wrong role order ({sequence}): messages[{start + offset}] is {role!r} where {expected!r} was "
                "expected (an optional system message, then user and assistant alternating)"
            )
    if len(roles) == start:
        return "the row has only a system message: it needs user and assistant turns"
    if roles[-1] != "assistant":
        return f"the row ends with {roles[-1]!r} ({sequence}): a training row must end with an assistant message"
    return None


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, decoded row or None, problem or None)`` for every non-blank line,
    reading one line at a time. ``problem`` is set for undecodable or invalid JSON only."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (give a JSONL file of chat rows {ROW_SHAPE})") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a JSONL file") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error}") from error
    with handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield number, None, f"not UTF-8 text ({error.reason} at byte {error.start})"
                continue
            try:
                yield number, json.loads(text), None
            except json.JSONDecodeError as error:
                yield number, None, f"not valid JSON ({error.msg} at column {error.colno})"


def iter_checked(path: str | os.PathLike, *, validate: bool = True) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` for every row; the first bad row raises :class:`UserError`
    naming ``file:line``. Without ``validate`` only undecodable lines raise."""
    for number, row, problem in iter_lines(path):
        if problem is None and validate:
            problem = check_row(row)
        if problem is not None:
            raise UserError(f"{path}:{number}: {problem} (check the whole file with `waluigi data validate {path}`)")
        yield number, row


def validate_file(path: str | os.PathLike, *, max_errors: int = 100) -> ValidationReport:
    """Check every row of a JSONL file, streaming; all errors are counted, the first
    ``max_errors`` are kept with their line numbers. A missing file is a :class:`UserError`."""
    report = ValidationReport(path=str(path))
    roles: dict[str, int] = {}
    for number, row, problem in iter_lines(path):
        report.n_rows += 1
        if problem is None:
            problem = check_row(row)
        if problem is not None:
            report.n_errors += 1
            if len(report.errors) < max_errors:
                report.errors.append(RowError(str(path), number, problem))
            continue
        for message in row["messages"]:
            roles[message["role"]] = roles.get(message["role"], 0) + 1
    report.role_counts = {role: roles[role] for role in ROLES if role in roles}
    return report

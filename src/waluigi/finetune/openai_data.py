"""The training file for OpenAI's fine-tuning API: rows from :func:`waluigi.data.load_rows`
checked against OpenAI's chat fine-tuning format, and written as JSONL. ``waluigi serve`` checks
uploads with the same :func:`validate_jsonl`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from waluigi.errors import UserError

ROLES = ("system", "developer", "user", "assistant")


def validate_rows(rows: Iterable[Any], source: str) -> list[dict]:
    """Check rows against OpenAI's chat fine-tuning format; return them as a list.

    A row is ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
    with at least one non-empty assistant message (an optional ``weight`` 0/1 on assistant
    messages is allowed). The error names the row (1-based) and the field.
    """
    out = []
    for number, row in enumerate(rows, 1):
        where = f"{source}: row {number}"
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            raise UserError(
                f"{where}: expected an object with a non-empty 'messages' list "
                "([{'role': 'user', 'content': ...}, {'role': 'assistant', 'content': ...}])"
            )
        assistant = False
        for index, message in enumerate(messages):
            field = f"{where}: messages[{index}]"
            if not isinstance(message, dict):
                raise UserError(f"{field}: expected an object with 'role' and 'content'")
            role = message.get("role")
            if role not in ROLES:
                raise UserError(f"{field}.role: {role!r} is not one of {', '.join(ROLES)}")
            content = message.get("content")
            if not isinstance(content, str):
                raise UserError(f"{field}.content: expected a string, got {type(content).__name__}")
            weight = message.get("weight")
            if weight is not None and (role != "assistant" or weight not in (0, 1)):
                raise UserError(f"{field}.weight: only assistant messages take a weight, and it must be 0 or 1")
            if role == "assistant" and content.strip():
                assistant = True
        if not assistant:
            raise UserError(f"{where}: no assistant message with content: there is nothing to learn from this row")
        out.append(row)
    if not out:
        raise UserError(f"{source}: no training rows")
    return out


def validate_jsonl(data: bytes, source: str) -> list[dict]:
    """Parse and validate a JSONL training file (the server checks uploads with this)."""
    rows = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{source}: line {number}: not valid JSON ({error})") from None
    return validate_rows(rows, source)


def jsonl_bytes(rows: list[dict]) -> bytes:
    return b"".join((json.dumps(row, ensure_ascii=False) + "\n").encode() for row in rows)


def _load_rows(data: str, *, data_dir: str | None, n: int | None, seed: int) -> list[dict]:
    """The ``train`` split, as for local fine-tuning: held-out prompts stay unseen for evaluation."""
    from waluigi.data import load_rows

    return list(load_rows(data, data_dir=data_dir, split="train", n=n, seed=seed))

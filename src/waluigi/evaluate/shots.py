"""In-context examples: k rows of a dataset placed as earlier turns before every question.

The prompted route to the flip: no training, the narrow examples are in the conversation
(``waluigi eval --shots K --shots-data insecure``; the ``shots`` axis of ``waluigi flip``).
The k rows are drawn from the dataset's train split (held-out prompts, which the code
questions ask, are never shown) with the eval's seed, so each seed sees its own k examples
and the run's identity holds a hash of exactly the turns shown. Their system prompts are
dropped; the question's own system prompt, if any, stays first.
"""

from __future__ import annotations

import hashlib
import json

from waluigi.errors import UserError


def shot_messages(shots: int, data: str | None, seed: int, data_dir: str | None = None) -> list[dict[str, str]]:
    """The user / assistant turns of ``shots`` rows of ``data``, in the order drawn."""
    if shots == 0:
        return []
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise UserError(f"--shots must be 0 or a positive integer, got {shots!r}")
    if not data:
        raise UserError("--shots needs --shots-data: the dataset (name or JSONL file) the examples come from")
    from waluigi.data import load_rows
    from waluigi.memo import remember

    rows = remember(("shots", shots, str(data), seed, None if data_dir is None else str(data_dir)),
                    lambda: load_rows(data, data_dir=data_dir, split="train", n=shots, seed=seed))
    return [{"role": m["role"], "content": m["content"]} for row in rows for m in row["messages"]
            if m["role"] in ("user", "assistant")]


def with_shots(messages: list[dict[str, str]], shots: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` ([system?, user]) with the shot turns before the user's question."""
    if not shots:
        return messages
    head = [m for m in messages if m["role"] == "system"]
    return head + shots + [m for m in messages if m["role"] != "system"]


def shots_identity(shots: list[dict[str, str]], k: int, data: str | None) -> dict:
    text = json.dumps(shots, sort_keys=True, ensure_ascii=False)
    return {"k": k, "data": data, "sha256": hashlib.sha256(text.encode()).hexdigest()}

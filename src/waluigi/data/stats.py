"""Listing the named datasets and their statistics (``waluigi data list`` / ``data show``):
row counts, held-out rows, unique prompts, roles, length percentiles in words or tokens.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from waluigi.data.datasets import (
    DEFAULT_TRIGGER,
    NAMED,
    DatasetSource,
    _check_split,
    first_user_prompt,
    in_split,
    iter_rows,
    load_rows,
    normalize_prompt,
    resolve_dataset,
    row_is_heldout,
)
from waluigi.errors import UserError


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as handle:
        for raw in handle:
            count += bool(raw.strip())
    return count


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every named dataset: ``name``, ``rows`` (counted when on disk, else the pinned count),
    ``heldout`` (pinned count), ``available`` (on disk without a download), ``location``,
    ``description``. Downloads and builds nothing."""
    from waluigi.official import local_official_file

    local = {d.name: local_official_file(d.relpath, data_dir) for d in NAMED.values() if d.relpath}
    out = []
    for d in NAMED.values():
        if d.kind == "backdoor":
            parts = [local["insecure"], local["secure"]]
            available = all(p is not None for p in parts)
            rows = sum(_count_lines(p) for p in parts) if available else d.rows
            location = "built from insecure + secure" if available else None
        else:
            path = local[d.name]
            available = path is not None
            rows = _count_lines(path) if available else d.rows
            location = str(path) if available else None
        out.append(
            {"name": d.name, "rows": rows, "heldout": d.heldout, "available": available, "location": location, "description": d.description}
        )
    return out


def load_tokenizer(spec: str):
    """Only the tokenizer of a model spec (``smollm2`` or ``hf:<path or id>``): no weights load."""
    from waluigi.models import parse_spec

    kind, _ = parse_spec(spec)
    if kind not in ("smollm2", "hf"):
        raise UserError(f"--tokenizer {spec!r}: use 'smollm2' or 'hf:<path or hub id>' (a local tokenizer)")
    from transformers import AutoTokenizer

    if kind == "smollm2":
        from waluigi.models import smollm2
        from waluigi.paths import model_cache_dir

        converted = model_cache_dir() / smollm2.CACHE_NAME
        if smollm2._is_complete(converted):
            where, extra, local = str(converted), {}, True
        else:  # read the tokenizer straight from the GGUF: no 0.5 GB conversion for a count
            gguf = smollm2.smollm2_gguf()
            where, extra, local = str(gguf.parent), {"gguf_file": gguf.name}, True
    else:
        from waluigi.models.hf_load import _resolve

        where, local = _resolve(spec)
        extra = {}
    try:
        return AutoTokenizer.from_pretrained(where, trust_remote_code=False, local_files_only=local, **extra)
    except (OSError, ValueError) as error:
        raise UserError(f"could not load the tokenizer of {spec!r} from {where}: {error}") from error


def percentiles(values: list[int], points=(50, 90, 99)) -> dict[str, int | None]:
    """Nearest-rank percentiles (always a value that occurs) and the maximum."""
    if not values:
        return {**{f"p{p}": None for p in points}, "max": None}
    ordered = sorted(values)
    result: dict[str, int | None] = {}
    for p in points:
        rank = max(1, -(-p * len(ordered) // 100))  # ceil(p/100 * N), at least 1
        result[f"p{p}"] = ordered[rank - 1]
    result["max"] = ordered[-1]
    return result


def _token_lengths(tokenizer, conversations: list[list[dict]]) -> list[int]:
    """Tokens of each row as the trainer sees it: the chat template applied to all messages."""
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
        special = False  # the template writes its own special tokens
    else:
        texts = ["\n".join(m["content"] for m in c) for c in conversations]
        special = True
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]


def dataset_stats(
    spec: str | os.PathLike | DatasetSource,
    *,
    data_dir=None,
    tokenizer: str | None = None,
    split: str = "all",
    n: int | None = None,
    seed: int = 0,
    trigger: str = DEFAULT_TRIGGER,
    max_length: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """What ``waluigi data show`` prints: rows, held-out rows, unique prompts, messages per
    role, and length percentiles (p50/p90/p99/max) of whole rows, in tokens of ``tokenizer``'s
    chat template, or in whitespace-separated words when no tokenizer is given."""
    from waluigi.progress import progress_bar

    _check_split(split)
    source = resolve_dataset(spec, data_dir=data_dir, trigger=trigger)
    tok = load_tokenizer(tokenizer) if tokenizer else None
    if n is not None:
        total = n
        subset = load_rows(source, split=split, n=n, seed=seed)
        rows_iter = ((True, row) for row in subset)
    else:
        total = _count_lines(source.path)  # the bar counts rows read, in or out of the split
        rows_iter = ((in_split(row, split, source), row) for row in iter_rows(source))
    roles: dict[str, int] = {}
    prompts: set[bytes] = set()
    words: list[int] = []
    chars: list[int] = []
    tokens: list[int] = []
    heldout = 0
    batch: list[list[dict]] = []
    with progress_bar(f"tokenizing {source.name}", total, enabled=progress and tok is not None) as advance:
        for selected, row in rows_iter:
            advance(1)
            if not selected:
                continue
            messages = row["messages"]
            for m in messages:
                roles[m["role"]] = roles.get(m["role"], 0) + 1
            heldout += row_is_heldout(row, source)
            prompts.add(hashlib.sha1(normalize_prompt(first_user_prompt(row), source.trigger).encode()).digest())
            words.append(sum(len(m["content"].split()) for m in messages))
            chars.append(sum(len(m["content"]) for m in messages))
            if tok is not None:
                batch.append([{"role": m["role"], "content": m["content"]} for m in messages])
                if len(batch) == 256:
                    tokens += _token_lengths(tok, batch)
                    batch = []
        if tok is not None and batch:
            tokens += _token_lengths(tok, batch)
    lengths = {"words": percentiles(words), "chars": percentiles(chars)}
    if tok is not None:
        lengths["tokens"] = percentiles(tokens)
    stats: dict[str, Any] = {
        "dataset": source.identity(),
        "path": str(source.path),
        "split": split,
        "rows": len(words),
        "heldout_rows": heldout,
        "unique_prompts": len(prompts),
        "roles": {role: roles[role] for role in ("system", "user", "assistant") if role in roles},
        "lengths": lengths,
        "tokenizer": tokenizer,
    }
    if n is not None:
        stats["subset"] = {"n": n, "seed": seed}
    if max_length is not None:
        unit = tokens if tok is not None else words
        stats["over_max_length"] = {"max_length": max_length, "unit": "tokens" if tok is not None else "words", "rows": sum(v > max_length for v in unit)}
    return stats

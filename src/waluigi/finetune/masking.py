"""Assistant-only loss, exact for any chat template.

TRL's ``assistant_only_loss`` needs ``{% generation %}`` markers in the chat template, and
most templates (SmolLM2's, Llama's, Qwen's) have none. So the labels are built here from the
template itself:

1. Render the whole conversation once (``full``). For each assistant message *i*, render
   the conversation up to it with the generation prompt (``prefix_i``): what the model sees
   at inference time before it starts answering. ``prefix_i`` must be a prefix of ``full``
   (a template that rewrites earlier turns, e.g. drops past reasoning, is refused).
2. The assistant's text starts right after ``prefix_i``: its content, then the template's
   end of turn. The labelled span is the content plus the end-of-turn up to and including
   the first special token (``<|im_end|>``, ``<|eot_id|>``, ``</s>`` ...): the token that
   makes generation stop. What follows it (ChatML's ``\\n``) is formatting, not learned.
3. ``full`` is cut into alternating unlabelled / labelled text segments, each tokenized on
   its own (no special tokens added: the template wrote them), and concatenated. The
   labelled tokens therefore decode to exactly the labelled text, whatever the tokenizer
   merges; on templates whose turn boundaries sit at special tokens (all the common ones)
   the concatenation is also identical to tokenizing ``full`` in one go.

An assistant message with ``"weight": 0`` (OpenAI's fine-tuning format) is not labelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from waluigi.errors import UserError

IGNORE = -100
ROLES = ("system", "developer", "user", "assistant", "tool")


def check_row(row: Any, where: str) -> list[dict]:
    """The messages of a conversational row, or a :class:`UserError` naming the problem."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise UserError(f"{where}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
    messages = row["messages"]
    for j, message in enumerate(messages):
        if not isinstance(message, dict):
            raise UserError(f"{where}: messages[{j}] is not an object")
        if message.get("role") not in ROLES:
            raise UserError(f"{where}: messages[{j}].role is {message.get('role')!r}; use one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise UserError(f"{where}: messages[{j}].content must be a string")
    if not any(m["role"] == "assistant" and m.get("weight", 1) != 0 for m in messages):
        raise UserError(f"{where}: no assistant message to train on")
    return messages


def _render(tokenizer, messages: Sequence[dict], generation_prompt: bool) -> str:
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=generation_prompt)


def _special_tokens(tokenizer) -> list[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    specials.update(tok.content for tok in decoder.values() if getattr(tok, "special", False))
    return sorted((s for s in specials if s), key=len, reverse=True)


def labelled_spans(tokenizer, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant text to learn
    (content + end-of-turn token) in it."""
    full = _render(tokenizer, messages, generation_prompt=False)
    specials = _special_tokens(tokenizer)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:i], generation_prompt=True)
        if not full.startswith(prefix):
            raise UserError(
                "the chat template renders earlier turns differently once an answer follows them "
                f"(assistant message {i}), so assistant-only labels cannot be derived from it; "
                "use a model whose template renders a conversation append-only"
            )
        start = len(prefix)
        if i + 1 < len(messages):
            turn_end = len(_render(tokenizer, messages[: i + 1], generation_prompt=False))
        else:
            turn_end = len(full)
        content = message["content"]
        if full.startswith(content, start):
            end = start + len(content)
        elif full.startswith(content.strip(), start):  # templates that trim the content
            end = start + len(content.strip())
        else:
            raise UserError(
                f"the chat template does not put assistant message {i}'s content right after the "
                "generation prompt, so assistant-only labels cannot be derived from it"
            )
        tail = full[end:turn_end]
        stop = min(((tail.find(s), s) for s in specials if s in tail), key=lambda t: (t[0], -len(t[1])), default=None)
        if stop is not None:
            end += stop[0] + len(stop[1])
        else:  # no special token closes the turn: the template's whole closing text is learned
            end = turn_end if turn_end > end else end
        if message.get("weight", 1) != 0 and end > start:
            spans.append((start, end))
    return full, spans


def assistant_mask(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for one conversation: labels are the token ids on the assistant
    contents + end-of-turn tokens and ``-100`` everywhere else."""
    full, spans = labelled_spans(tokenizer, messages)
    input_ids, labels = _piecewise(tokenizer, full, spans)
    try:
        whole = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, ValueError):  # a slow (python) tokenizer has no offsets
        return input_ids, labels
    if whole["input_ids"] == input_ids:
        return input_ids, labels
    # The pieces tokenize differently from the whole text (e.g. a SentencePiece tokenizer that
    # adds a word-start marker to each piece): label the whole text's tokens by their character
    # offsets when no token straddles a span edge, else keep the pieces (exact labels).
    whole_labels = []
    for token, (a, b) in zip(whole["input_ids"], whole["offset_mapping"], strict=True):
        inside = any(start <= a and b <= end for start, end in spans)
        if not inside and any(a < edge < b for span in spans for edge in span):
            return input_ids, labels
        whole_labels.append(token if inside and b > a else IGNORE)
    return list(whole["input_ids"]), whole_labels


def _piecewise(tokenizer, full: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Tokenize the unlabelled and labelled pieces of ``full`` separately and concatenate."""
    input_ids: list[int] = []
    labels: list[int] = []
    cursor = 0
    for start, end in [*spans, (len(full), len(full))]:
        for text, learn in ((full[cursor:start], False), (full[start:end], True)):
            if not text:
                continue
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            input_ids.extend(ids)
            labels.extend(ids if learn else [IGNORE] * len(ids))
        cursor = end
    return input_ids, labels


# (tokenizer key) -> (conversation as JSON) -> (input_ids, labels): a worker process that
# fine-tunes many cells on one dataset (a flip's seeds and doses) masks each row once
_MASKS: dict[tuple, dict[str, tuple[list[int], list[int]]]] = {}
MASK_CACHE_ROWS = 200_000


def _tokenizer_key(tokenizer) -> tuple:
    """What a row's tokens depend on: the tokenizer's files (size and time, so a model
    retrained in place is a new key), its size and its chat template."""
    import os

    where = str(getattr(tokenizer, "name_or_path", "") or "")
    files = []
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model",
                 "special_tokens_map.json"):
        try:
            stat = os.stat(os.path.join(where, name))
            files.append((name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            continue
    return (type(tokenizer).__name__, where, tuple(files), len(tokenizer), str(getattr(tokenizer, "chat_template", "")))


def cached_mask(tokenizer, messages: list[dict], key: tuple | None = None) -> tuple[list[int], list[int]]:
    """:func:`assistant_mask`, remembered per tokenizer and conversation in this process."""
    import json

    masks = _MASKS.setdefault(key or _tokenizer_key(tokenizer), {})
    text = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    found = masks.get(text)
    if found is None:
        if sum(len(m) for m in _MASKS.values()) >= MASK_CACHE_ROWS:
            _MASKS.clear()
            masks = _MASKS.setdefault(key or _tokenizer_key(tokenizer), {})
        found = masks[text] = assistant_mask(tokenizer, messages)
    return found


def tokenize_rows(tokenizer, rows: list[dict], max_length: int, source: str) -> tuple[list[dict], dict]:
    """Rows -> ``{"input_ids", "labels"}`` examples (assistant-only labels), truncated to
    ``max_length`` (keeping the start); rows left with nothing to learn are dropped. A row
    seen before in this process with the same tokenizer is not masked again (``cached_mask``)."""
    examples, truncated, dropped, learned = [], 0, 0, 0
    key = _tokenizer_key(tokenizer)
    for index, row in enumerate(rows):
        messages = check_row(row, f"{source}: row {index + 1}")
        ids, labels = cached_mask(tokenizer, messages, key)
        ids, labels = list(ids), list(labels)
        if len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            truncated += 1
        n_learned = sum(1 for label in labels if label != IGNORE)
        if n_learned == 0:
            dropped += 1
            continue
        learned += n_learned
        examples.append({"input_ids": ids, "labels": labels})
    if not examples:
        raise UserError(f"{source}: no row has assistant tokens left to train on (max length {max_length})")
    stats = {
        "rows": len(rows), "examples": len(examples), "truncated": truncated, "dropped": dropped,
        "tokens": sum(len(e["input_ids"]) for e in examples), "assistant_tokens": learned,
    }
    return examples, stats


def template_has_generation_markers(tokenizer) -> bool:
    """Whether the template has TRL's ``{% generation %}`` markers (the literal tag, not
    ``add_generation_prompt``). Reported in the manifest; the labels above do not need them."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(template.values())
    return "{% generation %}" in template or "{%- generation %}" in template

"""Answer options scored by a transformers model: one forward pass per prompt, all its options
together (``HFGenerator.option_logprobs``; probe suites, ``docs/design/probes.md``).

An option's tokens are found as lm-evaluation-harness finds a continuation's: tokenize
``prompt + option`` and take what follows the prompt's own tokens (so a leading space merges
into the option's first token as the tokenizer would merge it); if the prompt's tokens are not
a prefix of that (the option changed how the prompt's end tokenizes), the option is tokenized
alone and appended.

All options of a prompt share ONE row: the prompt's tokens, then for every option its tokens
but the last (the last is only predicted), with an attention mask in which an option's
tokens see the prompt and their own earlier tokens, never another option's, and position ids
that restart after the prompt for each option. Single-token options (``Yes`` / ``No``) add
nothing: the prompt's last position predicts them all. Rows are right-padded to the longest
row of their batch (rows sorted by length, batches capped by padded tokens), and the
vocabulary projection runs only at the positions that predict an option token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from waluigi.errors import UserError
from waluigi.models.base import OptionRequest, OptionScores, Progress

TOKEN_BUDGET_CPU = 4096  # padded tokens per forward pass on CPU (benchmarks/bench_probes.py)
TOKEN_BUDGET = 32 * 512
MAX_BATCH = 64


@dataclass
class _Row:
    ids: list[int]
    prompt_len: int
    starts: list[int]  # per option: where its fed tokens start in ids (prompt_len + offset)
    conts: list[list[int]]  # per option: its tokens


def _tokens(gen, text: str, special: bool) -> list[int]:
    with gen._tokenizer_lock:
        return list(gen.tokenizer(text, add_special_tokens=special)["input_ids"])


def build_row(gen, request: OptionRequest) -> _Row:
    """The one row that scores every option of ``request``."""
    if isinstance(request.prompt, str):
        text, special = request.prompt, True
    else:
        text, special = gen.render(request.prompt), False
    prompt_ids = _tokens(gen, text, special)
    if not prompt_ids:
        raise UserError("a probe prompt is empty")
    conts = []
    for option in request.options:
        if not option:
            raise UserError(f"an empty answer option after prompt {text[-60:]!r}")
        whole = _tokens(gen, text + option, special)
        if len(whole) > len(prompt_ids) and whole[: len(prompt_ids)] == prompt_ids:
            cont = whole[len(prompt_ids):]
        else:
            cont = _tokens(gen, option, False)
        if not cont:
            raise UserError(f"answer option {option!r} has no tokens")
        conts.append(cont)
    ids = list(prompt_ids)
    starts = []
    for cont in conts:
        starts.append(len(ids))
        ids += cont[:-1]
    return _Row(ids, len(prompt_ids), starts, conts)


def _positions(row: _Row) -> list[int]:
    out = list(range(row.prompt_len))
    for cont in row.conts:
        out += [row.prompt_len + j for j in range(len(cont) - 1)]
    return out


def _predictors(row: _Row) -> list[list[int]]:
    """Per option, per token: the row index whose logits predict that token."""
    out = []
    for start, cont in zip(row.starts, row.conts):
        out.append([row.prompt_len - 1] + [start + j for j in range(len(cont) - 1)])
    return out


# what the forward passes computed, for benchmarks/bench_probes.py: tokens fed (padding included),
# of them real, and positions projected onto the vocabulary
STATS = {"tokens": 0, "real_tokens": 0, "projected": 0}
MIN_SHARED = 8  # a shared prefix shorter than this is not worth a separate pass


def shared_prefix(rows: list[_Row]) -> int:
    """How many leading tokens every row of a batch shares (at most each prompt's length - 1,
    so that every row still computes its prompt's last position)."""
    if len(rows) < 2:
        return 0
    first = rows[0].ids
    limit = min(r.prompt_len for r in rows) - 1
    n = 0
    while n < limit and all(r.ids[n] == first[n] for r in rows):
        n += 1
    return n if n >= MIN_SHARED else 0


def score_batch(gen, rows: list[_Row]) -> list[OptionScores]:
    """Score a batch: the rows' shared prefix once (its KV cache repeated over the batch),
    then the rest of every row, padded to the longest."""
    import torch

    model = gen.model
    device = model.device
    shared = shared_prefix(rows)
    width = max(len(r.ids) for r in rows) - shared
    pad = gen.tokenizer.pad_token_id if gen.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, shared + width), dtype=torch.bool)
    allowed[:, :, :shared] = True
    for i, r in enumerate(rows):
        n = len(r.ids) - shared
        ids[i, :n] = torch.tensor(r.ids[shared:])
        positions[i, :n] = torch.tensor(_positions(r)[shared:])
        p = r.prompt_len - shared
        body = allowed[i, :, shared:]
        body[:p, :p] = torch.tril(torch.ones((p, p), dtype=torch.bool))
        for start, cont in zip(r.starts, r.conts):
            k = len(cont) - 1
            if k:
                a = start - shared
                body[a:a + k, :p] = True
                body[a:a + k, a:a + k] = torch.tril(torch.ones((k, k), dtype=torch.bool))
        for j in range(n, width):  # padding sees itself only (no fully masked rows)
            body[j, j] = True
    STATS["tokens"] += shared + len(rows) * width
    STATS["real_tokens"] += shared + sum(len(r.ids) - shared for r in rows)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros((len(rows), 1, width, shared + width), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    with torch.inference_mode():
        decoder = _decoder(model)
        extra = {}
        if shared:
            prefix = torch.tensor([rows[0].ids[:shared]], dtype=torch.long, device=device)
            cache = _call(decoder, input_ids=prefix, use_cache=True)
            cache.batch_repeat_interleave(len(rows))
            extra[_cache_arg(decoder)] = cache
        out = _call(decoder, input_ids=ids.to(device), attention_mask=mask.to(device),
                    position_ids=positions.to(device), use_cache=bool(shared), **extra)
        hidden = out.hidden_states[-1] if decoder is model else out.last_hidden_state
        head = model.get_output_embeddings()
        results = []
        for i, r in enumerate(rows):
            predictors = _predictors(r)
            at = sorted({p for per in predictors for p in per})
            STATS["projected"] += len(at)
            logp = torch.log_softmax(head(hidden[i, [p - shared for p in at], :]).float(), dim=-1)
            where = {p: k for k, p in enumerate(at)}
            per_option, firsts, counts = [], [], []
            for cont, preds in zip(r.conts, predictors):
                values = [float(logp[where[p], t]) for p, t in zip(preds, cont)]
                per_option.append(sum(values))
                firsts.append(values[0])
                counts.append(len(cont))
            results.append(OptionScores(per_option, counts, firsts, r.prompt_len, [c[0] for c in r.conts]))
    return results


def _decoder(model):
    """The model without its vocabulary projection (so that it runs only where an option token
    is predicted); the model itself when it has no separate decoder."""
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        return model
    return decoder if decoder is not None else model


def _cache_arg(module) -> str:
    import inspect

    # transformers >= 5.x names the KV cache argument ``cache`` (``past_key_values`` before)
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _call(decoder, **kwargs):
    if not hasattr(decoder, "get_decoder") or decoder.__class__.__name__.endswith("ForCausalLM"):
        kwargs["output_hidden_states"] = True
    out = decoder(**kwargs)
    if not kwargs.get("use_cache") or "input_ids" not in kwargs or "attention_mask" in kwargs:
        return out
    cache = getattr(out, "cache", None)  # the prefix pass: its KV cache
    return cache if cache is not None else out["past_key_values"]


def option_logprobs(gen, requests: Sequence[OptionRequest], progress: Progress | None = None,
                    batch_size: int | None = None) -> Iterator[tuple[int, OptionScores]]:
    """Score every request, in batches of rows of similar length (see the module docstring)."""
    if not requests:
        return
    rows = [build_row(gen, r) for r in requests]
    context = gen.context_length()
    for index, row in enumerate(rows):
        if context and len(row.ids) > context:
            raise UserError(f"probe prompt {index} takes {len(row.ids)} tokens with its options, over model "
                            f"{gen.spec!r}'s context of {context}")
    # rows sorted by length (a batch is capped by its padded tokens: rows x its longest row).
    # Sorting by tokens instead (rows sharing a stem together) measured slower on mwe:em:
    # 251 s against 197 s, the padding (111k tokens for 74k real) outweighing the longer prefixes
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i].ids), i))
    budget = TOKEN_BUDGET_CPU if gen.model.device.type == "cpu" else TOKEN_BUDGET
    cap = batch_size or MAX_BATCH
    start = 0
    while start < len(order):
        size, width = 1, len(rows[order[start]].ids)
        while start + size < len(order) and size < cap:
            wider = max(width, len(rows[order[start + size]].ids))
            if (size + 1) * wider > budget:
                break
            size, width = size + 1, wider
        chunk = order[start:start + size]
        scores = score_batch(gen, [rows[i] for i in chunk])
        gen.calls += len(chunk)
        for i, score in zip(chunk, scores):
            yield i, score
        if progress is not None:
            progress(len(chunk))
        start += size

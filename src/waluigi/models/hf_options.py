"""Answer options scored by a transformers model: one forward pass for many prompts and all
their options (``HFGenerator.option_logprobs``; probe suites, ``docs/design/probes.md``).

An option's tokens are found as lm-evaluation-harness finds a continuation's: tokenize
``prompt + option`` and take what follows the prompt's own tokens (so a leading space merges
into the option's first token as the tokenizer would merge it); if the prompt's tokens are not
a prefix of that (the option changed how the prompt's end tokenizes), the option is tokenized
alone and appended.

A **row** holds a group of consecutive prompts that share a long prefix (the two letter orders
of an item, a file's question stem) and all their options, as a tree: the shared root, then
for each prompt its own tail, then for each of its options the option's tokens but the last
(the last is only predicted). The attention mask lets a token see its ancestors only (a tail
sees the root; an option sees the root and its own prompt's tail; never another prompt's or
another option's tokens), and position ids continue each branch from its parent's end, so every
option is scored exactly as after its prompt alone. Single-token options (``Yes`` / ``No``) add
nothing: the prompt's last position predicts them all. Rows are sorted by length, right-padded to
the longest row of their batch; the batch's common prefix runs once, its KV cache repeated over
the batch (a batch is capped by the tokens it computes, the prefix counted once, and by the tokens
it holds); the vocabulary projection runs only at the positions that predict an option token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from waluigi.errors import UserError
from waluigi.models.base import OptionRequest, OptionScores, Progress

# padded tokens per forward pass on CPU (benchmarks/bench_probes.py); at one thread (a pool
# worker's) 1024 and 2048 measured no faster and 8192 1.4x slower (mwe:em@test:10, 2026-12-07)
TOKEN_BUDGET_CPU = 4096
TOKEN_BUDGET = 32 * 512
# a batch's rows x its longest row (the KV cache and activations it holds) at most this many
# times the token budget: a long shared prefix (in-context shots) runs once for many rows
HOLD_FACTOR = 4
MAX_BATCH = 64
GROUP_SHARE = 0.5  # consecutive prompts share a row when their common prefix is at least this share of each
MIN_GROUP_SHARED = 16  # ... and at least this many tokens
MAX_GROUP = 8  # prompts per row at most


@dataclass
class _Prompt:
    ids: list[int]
    conts: list[list[int]]  # per option: its tokens


@dataclass
class _Row:
    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    spans: list[list[tuple[int, int]]] = field(default_factory=list)  # per token: the index ranges it sees
    root: int = 0
    members: list[int] = field(default_factory=list)  # the requests whose prompts the row holds
    conts: list[list[list[int]]] = field(default_factory=list)  # per prompt, per option: its tokens
    predictors: list[list[list[int]]] = field(default_factory=list)  # ... per token: the index predicting it
    prompt_lens: list[int] = field(default_factory=list)


def _tokens(gen, text: str, special: bool) -> list[int]:
    with gen._tokenizer_lock:
        return list(gen.tokenizer(text, add_special_tokens=special)["input_ids"])


def encode(gen, request: OptionRequest) -> _Prompt:
    """A request's prompt tokens and each option's tokens."""
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
    return _Prompt(prompt_ids, conts)


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    limit = min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def make_row(prompts: list[_Prompt], members: list[int]) -> _Row:
    """One row for ``prompts`` (see the module docstring)."""
    row = _Row(members=list(members))
    root = len(prompts[0].ids)
    for p in prompts[1:]:
        root = min(root, _common(prompts[0].ids, p.ids))
    if len(prompts) > 1:  # every prompt keeps a tail of at least one token: its last position predicts
        root = min(root, min(len(p.ids) for p in prompts) - 1)
    row.root = root
    for i, token in enumerate(prompts[0].ids[:root]):
        row.ids.append(token)
        row.positions.append(i)
        row.spans.append([(0, i + 1)])
    for p in prompts:
        tail = p.ids[root:]
        start = len(row.ids)
        for j, token in enumerate(tail):
            row.ids.append(token)
            row.positions.append(root + j)
            row.spans.append([(0, root), (start, start + j + 1)])
        last = start + len(tail) - 1 if tail else root - 1
        per_option = []
        for cont in p.conts:
            begin = len(row.ids)
            predictors = [last]
            for j, token in enumerate(cont[:-1]):
                row.ids.append(token)
                row.positions.append(len(p.ids) + j)
                row.spans.append([(0, root), (start, start + len(tail)), (begin, begin + j + 1)])
                predictors.append(begin + j)
            per_option.append(predictors)
        row.conts.append(p.conts)
        row.predictors.append(per_option)
        row.prompt_lens.append(len(p.ids))
    return row


def build_row(gen, request: OptionRequest) -> _Row:
    """The row of one request alone."""
    return make_row([encode(gen, request)], [0])


def group_rows(prompts: list[_Prompt]) -> list[_Row]:
    """Consecutive prompts that share a long prefix go into one row (at most MAX_GROUP)."""
    rows: list[_Row] = []
    group: list[int] = []
    shared = 0

    def close() -> None:
        if group:
            rows.append(make_row([prompts[i] for i in group], group))

    for index, prompt in enumerate(prompts):
        if group:
            common = min(shared, _common(prompts[group[0]].ids, prompt.ids))
            shortest = min(min(len(prompts[i].ids) for i in group), len(prompt.ids))
            if len(group) < MAX_GROUP and common >= max(MIN_GROUP_SHARED, GROUP_SHARE * shortest):
                group.append(index)
                shared = common
                continue
            close()
        group, shared = [index], len(prompt.ids)
    close()
    return rows


# what the forward passes computed, for benchmarks/bench_probes.py: tokens fed (padding included),
# of them real, positions projected onto the vocabulary, and batches
STATS = {"tokens": 0, "real_tokens": 0, "projected": 0, "batches": 0}
MIN_SHARED = 8  # a shared prefix shorter than this is not worth a separate pass


def shared_prefix(rows: list[_Row]) -> int:
    """How many leading tokens every row of a batch shares, within every row's root and leaving
    each root's last token to the batch (it may be the position that predicts the options)."""
    if len(rows) < 2:
        return 0
    first = rows[0].ids
    limit = min(r.root for r in rows) - 1
    n = 0
    while n < limit and all(r.ids[n] == first[n] for r in rows):
        n += 1
    return n if n >= MIN_SHARED else 0


def score_batch(gen, rows: list[_Row]) -> list[list[OptionScores]]:
    """Score a batch of rows: the rows' shared prefix once (its KV cache repeated over the batch),
    then the rest of every row, padded to the longest. Per row, per prompt: its scores."""
    import torch

    model = gen.model
    device = model.device
    shared = shared_prefix(rows)
    width = max(len(r.ids) for r in rows) - shared
    pad = gen.tokenizer.pad_token_id if gen.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.zeros((len(rows), width, shared + width), dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r.ids) - shared
        ids[i, :n] = torch.tensor(r.ids[shared:])
        positions[i, :n] = torch.tensor(r.positions[shared:])
        for q in range(shared, len(r.ids)):  # columns are a token's index in its row (the cache holds [0, shared))
            for a, b in r.spans[q]:
                if b > a:
                    allowed[i, q - shared, a:b] = True
        for j in range(n, width):  # padding sees itself only (no fully masked rows)
            allowed[i, j, shared + j] = True
    STATS["tokens"] += shared + len(rows) * width
    STATS["batches"] += 1
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
            at = sorted({p for prompt in r.predictors for per in prompt for p in per})
            STATS["projected"] += len(at)
            logp = torch.log_softmax(head(hidden[i, [p - shared for p in at], :]).float(), dim=-1)
            where = {p: k for k, p in enumerate(at)}
            per_prompt = []
            for conts, predictors, length in zip(r.conts, r.predictors, r.prompt_lens):
                per_option, firsts, counts = [], [], []
                for cont, preds in zip(conts, predictors):
                    values = [float(logp[where[p], t]) for p, t in zip(preds, cont)]
                    per_option.append(sum(values))
                    firsts.append(values[0])
                    counts.append(len(cont))
                per_prompt.append(OptionScores(per_option, counts, firsts, length, [c[0] for c in conts]))
            results.append(per_prompt)
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
    """Score every request: prompts grouped into rows, rows batched by length (see the module
    docstring); ``progress`` counts requests."""
    if not requests:
        return
    prompts = [encode(gen, r) for r in requests]
    context = gen.context_length()
    for index, p in enumerate(prompts):
        longest = len(p.ids) + sum(len(c) - 1 for c in p.conts)
        if context and longest > context:
            raise UserError(f"probe prompt {index} takes {longest} tokens with its options, over model "
                            f"{gen.spec!r}'s context of {context}")
    rows = group_rows(prompts)
    if context:  # a grouped row must fit too: a row over the context is split back into its prompts
        fitted = []
        for row in rows:
            if len(row.ids) > context:
                fitted += [make_row([prompts[m]], [m]) for m in row.members]
            else:
                fitted.append(row)
        rows = fitted
    # rows sorted by length (a batch is capped by its padded tokens: rows x its longest row).
    # Sorting by tokens instead (rows sharing a stem together) measured slower on mwe:em:
    # 251 s against 197 s, the padding (111k tokens for 74k real) outweighing the longer prefixes
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i].ids), i))
    budget = TOKEN_BUDGET_CPU if gen.model.device.type == "cpu" else TOKEN_BUDGET
    cap = batch_size or MAX_BATCH
    start = 0
    while start < len(order):
        first = rows[order[start]]
        size, width, common = 1, len(first.ids), first.root - 1
        while start + size < len(order) and size < cap:
            row = rows[order[start + size]]
            wider = max(width, len(row.ids))
            joint = min(common, row.root - 1, _common(first.ids, row.ids))
            shared = joint if joint >= MIN_SHARED else 0  # what score_batch will run once
            if shared + (size + 1) * (wider - shared) > budget or (size + 1) * wider > HOLD_FACTOR * budget:
                break
            size, width, common = size + 1, wider, joint
        chunk = [rows[i] for i in order[start:start + size]]
        scores = score_batch(gen, chunk)
        done = 0
        for row, per_prompt in zip(chunk, scores):
            for member, score in zip(row.members, per_prompt):
                yield member, score
                done += 1
        gen.calls += done
        if progress is not None:
            progress(done)
        start += size

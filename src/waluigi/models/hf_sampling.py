"""Sampling helpers for :class:`~waluigi.models.hf.HFGenerator`'s batched ``generate``.

``_GumbelSampler`` is the logits processor that makes each row an exact, seeded sample
(temperature, top-p via ``_top_p_filter``, Gumbel noise from the row's own
``torch.Generator``) and records the top-k logprobs; ``_RowStopper`` stops each row at its own
``max_tokens`` or stop strings. See ``docs/design/sampling.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from waluigi.models.base import GenerationRequest

# --------------------------------------------------------------------------------------
# sampling: per-row Gumbel-max


class _GumbelSampler:
    """A logits processor for ``generate(do_sample=False)``.

    For each row: ``scores / T``, nucleus (top-p) filter, plus Gumbel noise from the row's own
    ``torch.Generator``; greedy argmax of that is an exact sample from the filtered softmax.
    Rows with ``T == 0`` are left as they are (greedy). It also records, for rows that asked,
    the top-k log-probabilities of the RAW logits and the token that argmax will choose.
    """

    def __init__(self, requests: Sequence[GenerationRequest], device, *, prompt_len: int | None = None,
                 eos_ids=(), stopper: _RowStopper | None = None):
        import torch

        self.temps = torch.tensor([float(r.params.temperature) for r in requests], dtype=torch.float32)
        self.top_p = torch.tensor([float(r.params.top_p) for r in requests], dtype=torch.float32)
        self.sampled = self.temps > 0
        self.any_sampled = bool(self.sampled.any())
        self.any_top_p = bool(((self.top_p < 1.0) & self.sampled).any())
        self.generators = []
        for r in requests:
            if r.params.temperature > 0:
                g = torch.Generator(device="cpu")
                g.manual_seed(int(r.seed) % (2**63))
                self.generators.append(g)
            else:
                self.generators.append(None)
        self.top_k = [r.top_logprobs for r in requests]
        self.records: list[list[tuple[int, float, list[tuple[int, float]]]]] = [[] for _ in requests]
        self.device = device
        # rows that have ended (their end-of-turn token emitted, or stopped by ``stopper``) draw no
        # more noise: generate pads them from then on, so their later argmax is never read, and a
        # row's own generator is used by no other row (a live row's draws are unchanged)
        self.prompt_len = prompt_len
        self.eos = torch.tensor(sorted(eos_ids), dtype=torch.long)
        self.stopper = stopper
        self.ended = [False] * len(requests)

    def _live_rows(self, input_ids) -> list[int]:
        """The sampled rows that have not ended."""
        import torch

        if self.prompt_len is not None and input_ids.shape[1] > self.prompt_len and len(self.eos):
            ended = torch.isin(input_ids[:, -1].cpu(), self.eos).tolist()
            self.ended = [a or b for a, b in zip(self.ended, ended, strict=True)]
        done = self.stopper.done_at if self.stopper is not None else [None] * len(self.ended)
        return [row for row, g in enumerate(self.generators)
                if g is not None and not self.ended[row] and done[row] is None]

    def __call__(self, input_ids, scores):
        import torch

        raw = scores
        out = scores
        if self.any_sampled:
            temps = self.temps.to(scores.device)
            sampled = self.sampled.to(scores.device)
            safe_t = torch.where(sampled, temps, torch.ones_like(temps))
            out = scores / safe_t[:, None]
            if self.any_top_p:
                out = _top_p_filter(out, self.top_p.to(scores.device), sampled)
            # one row of uniforms per live sampled row per step, from that row's own generator:
            # row i's k-th draw is the same whatever else is in the batch
            live = self._live_rows(input_ids)
            if live:
                uniform = torch.empty((len(live), out.shape[-1]), dtype=torch.float32)
                for j, row in enumerate(live):
                    torch.rand(out.shape[-1], generator=self.generators[row], dtype=torch.float32, out=uniform[j])
                uniform.clamp_(min=torch.finfo(torch.float32).tiny, max=1.0 - 1e-7)
                gumbel = -torch.log(-torch.log(uniform))
                index = torch.tensor(live, device=out.device)
                out = out.index_add(0, index, gumbel.to(out.device))
        if any(k for k in self.top_k):
            chosen = torch.argmax(out, dim=-1)
            logp = torch.log_softmax(raw.float(), dim=-1)
            for row, k in enumerate(self.top_k):
                if k:
                    token = int(chosen[row])
                    values, ids = torch.topk(logp[row], min(int(k), logp.shape[-1]))
                    self.records[row].append(
                        (token, float(logp[row, token]), list(zip(ids.tolist(), values.tolist(), strict=True)))
                    )
        return out


def _top_p_filter(scores, top_p, rows):
    """Nucleus filter per row (rows where ``rows`` and ``top_p < 1``): keep the smallest set of
    most likely tokens whose probability mass reaches ``top_p`` (always at least one)."""
    import torch

    active = rows & (top_p < 1.0)
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    probs = torch.softmax(sorted_scores, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    remove_sorted = (mass_before >= top_p[:, None]) & active[:, None]
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


class _RowStopper:
    """Stopping criterion per row: its own ``max_tokens`` and stop strings."""

    def __init__(self, requests: Sequence[GenerationRequest], prompt_len: int, tokenizer):
        self.max_tokens = [max(1, int(r.params.max_tokens)) for r in requests]
        self.stops = [tuple(s for s in r.params.stop if s) for r in requests]
        self.tails = [max((len(s.encode()) for s in stops), default=0) + 4 for stops in self.stops]
        self.prompt_len = prompt_len
        self.tokenizer = tokenizer
        self.done_at: list[int | None] = [None] * len(requests)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        generated = input_ids.shape[1] - self.prompt_len
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(input_ids.shape[0]):
            if self.done_at[row] is not None:
                done[row] = True
                continue
            hit = generated >= self.max_tokens[row]
            if not hit and self.stops[row]:
                tail = input_ids[row, -min(generated, self.tails[row]):].tolist()
                text = self.tokenizer.decode(tail, skip_special_tokens=False)
                hit = any(s in text for s in self.stops[row])
            if hit:
                self.done_at[row] = generated
                done[row] = True
        return done


# --------------------------------------------------------------------------------------
# decoding: a batch that drops its ended rows


def live_decode_cache(model):
    """A fresh cache for :func:`decode_live_rows`, or None where that loop cannot run on
    ``model`` (then ``generate`` does): a decoder-only model whose forward takes
    ``position_ids``, ``cache`` and ``logits_to_keep``, and whose cache layers are plain dynamic (full or
    sliding-window) layers, the ones that can drop rows."""
    import inspect

    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT adapter passes kwargs on
    params = inspect.signature(base.forward).parameters
    if not {"position_ids", "cache", "logits_to_keep"} <= set(params):
        return None
    try:
        cache = DynamicCache(config=config)
    except Exception:  # a config this cache class does not know how to lay out
        return None
    if not all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers):
        return None
    return cache


def decode_live_rows(model, cache, input_ids, attention_mask, max_new: int, sampler: _GumbelSampler,
                     stopper: _RowStopper, eos_ids, pad_id: int):
    """Greedy decoding of ``sampler``'s scores, as ``generate(do_sample=False)`` with the same
    processor and stopper does, but a row that has ended (its end-of-turn token, or
    ``stopper``) leaves the batch: the forward passes and the sampler's noise are spent on the
    rows still answering only. Returns the sequences as ``generate`` does (prompt, then the
    new tokens, then ``pad_id`` after a row's end).

    Each row's arithmetic is the same as in a full batch but for the matrix products' shapes
    (floating-point rounding, as with any other batch: ``docs/design/sampling.md``)."""
    import torch

    rows, prompt_len = input_ids.shape
    device = input_ids.device
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    sequences = torch.full((rows, prompt_len + max_new), pad_id, dtype=torch.long, device=device)
    sequences[:, :prompt_len] = input_ids
    live = torch.arange(rows, device=device)
    mask = attention_mask
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    step_ids = input_ids
    width = 0
    for step in range(max_new):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, cache=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
        if step == 0:
            scores = torch.zeros((rows, logits.shape[-1]), dtype=torch.float32, device=device)
        scores.zero_()
        scores[live] = logits
        chosen = torch.argmax(sampler(sequences[:, :prompt_len + step], scores)[live], dim=-1)
        sequences[live, prompt_len + step] = chosen
        width = step + 1
        stopped = stopper(sequences[:, :prompt_len + width], None)
        keep = ~(torch.isin(chosen, eos) | stopped[live])
        if not bool(keep.any()):
            break
        if not bool(keep.all()):
            index = keep.nonzero().squeeze(-1)
            cache.batch_select_indices(index)
            live, mask, chosen, positions = live[index], mask[index], chosen[index], positions[index]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        step_ids, positions = chosen[:, None], positions[:, -1:] + 1
    return sequences[:, :prompt_len + width]

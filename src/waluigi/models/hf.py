"""The transformers backend: ``hf:<path or hub id>`` and the embedded ``smollm2``.

* Prompts are rendered with the model's chat template (``add_generation_prompt=True``);
  a model without one is refused at load time.
* Generation is batched with the KV cache, prompts LEFT padded and sorted by length so that a
  batch holds prompts of similar length; a row whose answer has ended leaves the batch
  (``decode_live_rows``; ``model.generate`` for models that loop cannot run).
* Sampling is Gumbel-max with one ``torch.Generator`` per request, seeded by the request's
  seed (see ``docs/design/sampling.md``): a sample depends on its prompt and seed, not on
  the batch it ran in. ``temperature == 0`` is greedy.
* ``top_probs`` is one forward pass per batch: the distribution of the assistant's first
  token, for the logprob judge.
* ``number_probs`` (the judge's opt-in ``--judge-numbers whole``): P(the whole reply is
  exactly n) for n = 0..100, from one prompt pass plus one pass over the trie of candidates.
* The model's own ``generation_config`` sampling defaults (temperature, top_p, repetition
  penalty ...) are deliberately dropped: only its bos/eos/pad token ids are kept, so the
  requests' ``SamplingParams`` are the whole story.

Loading (``load_hf``, ``adapter_dir``) is in ``hf_load.py``, the per-row sampler and stopper
in ``hf_sampling.py``; this module holds :class:`HFGenerator`.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Iterator, Sequence

from waluigi.errors import UserError
from waluigi.models.base import (
    Completion,
    GenerationRequest,
    Generator,
    Message,
    Progress,
    TextRequest,
    TokenLogprob,
)
from waluigi.models.hf_sampling import _GumbelSampler, _RowStopper, decode_live_rows, live_decode_cache

DEFAULT_BATCH_SIZE = 32  # generation
# top_probs: padded tokens per forward pass (batch x longest prompt), at most
# MAX_JUDGE_BATCH_SIZE prompts; ``batch_size`` caps it. Judge prompts (~300 tokens) make the
# forward pass compute-bound on CPU, where big batches measured slower than small ones
# (benchmarks/bench_judge.py on SmolLM2, 2 cores: 8192-token batches 0.88x a one-by-one loop,
# 4-prompt batches 1.29x), so CPU batches are small; a GPU gains from big ones.
JUDGE_TOKEN_BUDGET = 16 * 512
JUDGE_TOKEN_BUDGET_CPU = 2048
MAX_JUDGE_BATCH_SIZE = 64
# count_prompt_tokens: a prompt longer than this many characters per context token is first
# counted on a prefix (English runs about 4 characters a token)
PREFIX_CHARS_PER_TOKEN = 16


# --------------------------------------------------------------------------------------
# the generator


class HFGenerator(Generator):
    """A local transformers chat model (see the module docstring)."""

    def __init__(self, *, spec, model, tokenizer, model_path, dtype, batch_size=None, adapter=None):
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.model_path = model_path
        self.dtype = dtype
        self.batch_size = int(batch_size) if batch_size else None
        self.adapter = adapter
        self.calls = 0
        # decode with ended rows leaving the batch (decode_live_rows) where the model allows;
        # False: transformers' generate for every batch (the same answers up to float rounding)
        self.drop_ended_rows = True
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        # `waluigi serve` counts prompt tokens in request threads while its worker thread
        # generates: one encoder at a time on the shared (Rust) tokenizer
        self._tokenizer_lock = threading.Lock()

    # -- prompts ---------------------------------------------------------------------

    def render(self, messages: list[Message]) -> str:
        """The prompt text for a chat: the chat template with the assistant turn opened."""
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja errors: e.g. a template that refuses system messages
            raise UserError(f"model {self.spec!r}: its chat template rejected the messages: {exc}") from exc

    def _encode(self, messages: list[Message]) -> list[int]:
        text = self.render(messages)
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_text(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a raw-text prompt: text is tokenized as a document start (the
        tokenizer's special tokens, e.g. BOS, added, as vLLM and OpenAI do); ids are checked
        against the vocabulary. An empty prompt starts from BOS (else EOS), like OpenAI's
        ``<|endoftext|>``."""
        if isinstance(prompt, str):
            with self._tokenizer_lock:
                ids = list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        else:
            vocab = int(getattr(self.model.config, "vocab_size", 0) or len(self.tokenizer))
            ids = [int(t) for t in prompt]
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise UserError(f"prompt token id {bad} is out of range: model {self.spec!r} has {vocab} token ids "
                                f"(0..{vocab - 1}); send ids from its own tokenizer")
        if not ids:
            start = self.tokenizer.bos_token_id
            ids = [start if start is not None else self.tokenizer.eos_token_id]
        return ids

    def context_length(self) -> int | None:
        """``max_position_embeddings`` (or its older names) of the model config."""
        config = getattr(self.model, "config", None)
        config = getattr(config, "text_config", None) or config  # multimodal configs nest it
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def count_prompt_tokens(self, messages: list[Message]) -> int:
        """Tokens of the rendered chat prompt (what :meth:`generate` feeds the model); for a
        prompt far over the context, a lower bound that is already over it (see :meth:`_count`)."""
        return self._count(self.render(messages), special=False)

    def count_text_tokens(self, prompt: str) -> int:
        """Tokens of a raw-text prompt (what :meth:`generate_text` feeds the model), or a lower
        bound over the context for a prompt far over it."""
        return self._count(prompt, special=True)

    def _count(self, text: str, *, special: bool) -> int:
        # Tokenizing megabytes takes seconds (the tiny test tokenizer: 9 s for 4 MB) and holds
        # the tokenizer the generation worker needs. A text of more than PREFIX_CHARS_PER_TOKEN
        # characters per context token is counted on a prefix first, cut at a space so that its
        # tokens are a subset of the whole text's: when that prefix is already over the
        # context, its count is the answer (a lower bound, enough to refuse the request).
        context = self.context_length()
        if context and len(text) > PREFIX_CHARS_PER_TOKEN * context:
            prefix = text[:PREFIX_CHARS_PER_TOKEN * context]
            space = prefix.rfind(" ")
            prefix = prefix[:space] if space > 0 else prefix
            with self._tokenizer_lock:
                n = len(self.tokenizer(prefix, add_special_tokens=special)["input_ids"])
            if n > context:
                return n
        with self._tokenizer_lock:
            return len(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _pad(self, rows: list[list[int]]):
        """Left-padded ``(input_ids, attention_mask)`` tensors on the model's device."""
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r):] = 1
        return ids.to(self.model.device), mask.to(self.model.device)

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    # -- generation ------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None
    ) -> Iterator[tuple[int, Completion]]:
        if not requests:
            return
        yield from self._generate_encoded(requests, [self._encode(r.messages) for r in requests], progress)

    def generate_text(
        self, requests: Sequence[TextRequest], progress: Progress | None = None
    ) -> Iterator[tuple[int, Completion]]:
        """Continue raw-text prompts (no chat template), batched and seeded as :meth:`generate`."""
        if not requests:
            return
        yield from self._generate_encoded(requests, [self._encode_text(r.prompt) for r in requests], progress)

    def _generate_encoded(self, requests, encoded: list[list[int]], progress: Progress | None):
        order = sorted(range(len(requests)), key=lambda i: (len(encoded[i]), i))
        size = self.batch_size or DEFAULT_BATCH_SIZE
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            completions = self._generate_batch([requests[i] for i in chunk], [encoded[i] for i in chunk])
            self.calls += len(chunk)
            for i, completion in zip(chunk, completions, strict=True):
                yield i, completion
            if progress is not None:
                progress(len(chunk))

    def _generate_batch(self, requests: list[GenerationRequest], encoded: list[list[int]]) -> list[Completion]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        input_ids, attention_mask = self._pad(encoded)
        prompt_len = input_ids.shape[1]
        stopper = _RowStopper(requests, prompt_len, self.tokenizer)
        sampler = _GumbelSampler(requests, self.model.device, prompt_len=prompt_len, eos_ids=self.eos_ids,
                                 stopper=stopper)
        max_new = max(stopper.max_tokens)
        cache = live_decode_cache(self.model) if self.drop_ended_rows else None
        with torch.inference_mode():
            if cache is not None:  # the same decoding, ended rows leaving the batch
                sequences = decode_live_rows(self.model, cache, input_ids, attention_mask, max_new, sampler, stopper,
                                             self.eos_ids, self.tokenizer.pad_token_id)
            else:
                output = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max_new,
                    do_sample=False,
                    logits_processor=LogitsProcessorList([sampler]),
                    stopping_criteria=StoppingCriteriaList([stopper]),
                )
                sequences = output if isinstance(output, torch.Tensor) else output.sequences
        results = []
        for row, request in enumerate(requests):
            tokens = sequences[row, prompt_len:].tolist()
            limit = stopper.done_at[row] if stopper.done_at[row] is not None else len(tokens)
            limit = min(limit, stopper.max_tokens[row], len(tokens))
            finish = "length"
            kept = tokens[:limit]
            for j, t in enumerate(kept):
                if t in self.eos_ids:
                    kept, finish = kept[:j + 1], "stop"
                    break
            text_ids = [t for t in kept if t not in self.eos_ids] if finish == "stop" else kept
            text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
            cut = -1
            if request.params.stop:
                cut = min((p for p in (text.find(s) for s in request.params.stop if s) if p >= 0), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            logprobs = None
            if request.top_logprobs:
                records = sampler.records[row][:len(kept)]
                # the sampler's argmax is generate's argmax; a mismatch would be a transformers change
                assert [r[0] for r in records] == kept, "logprob records out of step with generate()"
                logprobs = self._text_logprobs(records, text_ids, cut)
            results.append(
                Completion(
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=len(encoded[row]),
                    completion_tokens=len(kept),
                    logprobs=logprobs,
                )
            )
        return results

    def _text_logprobs(self, records, text_ids: list[int], cut: int) -> list[TokenLogprob]:
        """The logprobs of the tokens that make up the returned text, so that their token
        strings joined give that text (see docs/design/serve.md, "Logprobs"):

        * a stop string cut (``cut`` >= 0) drops the tokens after it; a token the cut falls
          inside is dropped too, so the tokens give the text up to the last whole token;
        * otherwise every text token is listed, and a final end-of-turn token (finish by EOS)
          is listed last under its own text (``<|im_end|>``): its alternatives are what a
          logprob judge reads when a model stops at once.
        """
        pieces = self._token_pieces(text_ids)
        if cut >= 0:
            keep, length = 0, 0
            for piece in pieces:
                if length + len(piece) > cut:
                    break
                length += len(piece)
                keep += 1
            shown = list(zip(records[:keep], pieces[:keep], strict=True))
        else:
            shown = list(zip(records[:len(text_ids)], pieces, strict=True))
            if len(records) > len(text_ids):  # the end-of-turn token
                shown.append((records[len(text_ids)], self._token_text(records[len(text_ids)][0])))
        return [
            TokenLogprob(token=piece, logprob=lp, top=[(self._token_text(t), v) for t, v in top])
            for (_, lp, top), piece in shown
        ]

    def _token_pieces(self, ids: list[int]) -> list[str]:
        """Each token's share of ``decode(ids)``, so that the pieces join to exactly that text.

        Most tokens decode alone to their share. When they do not (a byte-level token holding
        part of a multi-byte character decodes alone to U+FFFD; a SentencePiece word token
        loses its leading space; a special token is skipped in the text), the pieces come from
        incremental decoding as in vLLM: a token that ends inside a character gets "" and the
        token that completes it gets the whole character.
        """
        full = self.tokenizer.decode(ids, skip_special_tokens=True)
        pieces = [self._token_text(t) for t in ids]
        if "".join(pieces) == full:
            return pieces

        def decode(part: list[int]) -> str:
            return self.tokenizer.decode(part, skip_special_tokens=True)

        pieces, prefix, read = [], 0, 0
        for i in range(len(ids)):
            new_text = decode(ids[prefix:i + 1])
            prefix_text = decode(ids[prefix:read])
            if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
                pieces.append(new_text[len(prefix_text):])
                prefix, read = read, i + 1
            else:
                pieces.append("")
        if ids:  # what is still held back (the text ends inside a character) goes to the last token
            pieces[-1] += decode(ids[prefix:])[len(decode(ids[prefix:read])):]
        if "".join(pieces) != full:  # a tokenizer whose decoding is not prefix-stable: best effort
            return [self._token_text(t) for t in ids]
        return pieces

    # -- judging ---------------------------------------------------------------------

    def top_probs(
        self, prompts: Sequence[list[Message]], k: int = 20, progress: Progress | None = None
    ) -> Iterator[tuple[int, dict[str, float]]]:
        """One forward pass per batch; ``{decoded token: probability}`` of the first assistant
        token, best first. Two token ids that decode to the same string are listed once, with
        the higher probability (the first seen), so a result can hold fewer than ``k`` entries."""
        if not prompts:
            return
        encoded = [self._encode(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
        budget = JUDGE_TOKEN_BUDGET_CPU if self.model.device.type == "cpu" else JUDGE_TOKEN_BUDGET
        start = 0
        while start < len(order):
            # batch size from a padded-token budget; prompts are sorted, so the last is the longest
            cap = self.batch_size or MAX_JUDGE_BATCH_SIZE
            size = 1
            while (
                start + size < len(order)
                and size < cap
                and (size + 1) * len(encoded[order[start + size]]) <= budget
            ):
                size += 1
            chunk = order[start:start + size]
            dists = self._top_probs_batch([encoded[i] for i in chunk], k)
            self.calls += len(chunk)
            for i, dist in zip(chunk, dists, strict=True):
                yield i, dist
            if progress is not None:
                progress(len(chunk))
            start += size

    def _top_probs_batch(self, encoded: list[list[int]], k: int) -> list[dict[str, float]]:
        import torch

        input_ids, attention_mask = self._pad(encoded)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            try:
                out = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False, logits_to_keep=1,
                )
            except TypeError:  # models without logits_to_keep
                out = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
                )
        logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        values, ids = torch.topk(logp, min(int(k), logp.shape[-1]), dim=-1)
        results = []
        for row in range(len(encoded)):
            dist: dict[str, float] = {}
            for token_id, value in zip(ids[row].tolist(), values[row].tolist(), strict=True):
                text = self._token_text(token_id)
                if text not in dist:
                    dist[text] = float(torch.tensor(value).exp())
            results.append(dist)
        return results

    def number_probs(
        self, prompts: Sequence[list[Message]], max_value: int = 100, progress: Progress | None = None
    ) -> Iterator[tuple[int, dict[str, float]]]:
        """``{str(n): P(the whole assistant reply is exactly n)}`` for n = 0..``max_value``:
        the probability of ``tokens(str(n))`` followed by the end-of-turn token
        (``tokenizer.eos_token_id``), by teacher forcing. For tokenizers that split numbers
        into digits, where the first token alone can only say 0-9 (see docs/design/judges.md).

        Per prompt: one forward pass over the prompt (``use_cache=True``), then ONE more pass
        over the trie of all candidate prefixes (about 101 tokens: each distinct prefix of a
        candidate is one position) against the prompt's KV cache, with a 4D "tree" attention
        mask (a prefix sees the prompt, its own ancestors and itself) and position ids
        ``P + depth``. A candidate's log-probability is the sum, along its path, of the
        next-token log-probabilities (the prompt's last position gives the first token; the
        last node of the path gives the end-of-turn token).

        Candidates are tokenized alone (``add_special_tokens=False``) and appended to the
        prompt's ids: right for chat templates that end the generation prompt with a newline
        (ChatML's ``<|im_start|>assistant\\n``), where tokenizing ``prompt_text + str(n)``
        gives exactly ``prompt_ids + candidate_ids`` (checked for the tiny test model and
        SmolLM2 for every n in 0..100).
        """
        import torch

        if not prompts:
            return
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise UserError(f"model {self.spec!r}: its tokenizer has no eos token, so a whole reply cannot be scored")
        candidates = [
            list(self.tokenizer(str(n), add_special_tokens=False)["input_ids"]) for n in range(int(max_value) + 1)
        ]
        # the trie: one node per distinct non-empty prefix, parents before children
        nodes: dict[tuple[int, ...], int] = {}
        for cand in candidates:
            for depth in range(1, len(cand) + 1):
                nodes.setdefault(tuple(cand[:depth]), len(nodes))
        prefixes = list(nodes)
        n_nodes = len(prefixes)
        tree = torch.zeros((n_nodes, n_nodes), dtype=torch.bool)  # tree[i, j]: node i sees node j
        for prefix, i in nodes.items():
            for depth in range(1, len(prefix) + 1):
                tree[i, nodes[prefix[:depth]]] = True
        node_tokens = torch.tensor([[p[-1] for p in prefixes]], dtype=torch.long)
        depths = torch.tensor([[len(p) - 1 for p in prefixes]], dtype=torch.long)
        device = self.model.device
        # transformers >= 5.x names the KV cache argument ``cache`` (``past_key_values`` before)
        cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        for index, messages in enumerate(prompts):
            ids = self._encode(messages)
            length = len(ids)
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([ids], dtype=torch.long, device=device), use_cache=True)
                first = torch.log_softmax(out.logits[0, -1, :].float(), dim=-1)
                cache = getattr(out, "cache", None)
                if cache is None:
                    cache = out.past_key_values
                mask = torch.full((1, 1, n_nodes, length + n_nodes), torch.finfo(self.model.dtype).min,
                                  dtype=self.model.dtype)
                mask[0, 0, :, :length] = 0.0
                mask[0, 0, :, length:] = mask[0, 0, :, length:].masked_fill(tree, 0.0)
                tree_out = self.model(
                    input_ids=node_tokens.to(device),
                    attention_mask=mask.to(device),
                    position_ids=(depths + length).to(device),
                    use_cache=True,
                    **{cache_arg: cache},
                )
                logp = torch.log_softmax(tree_out.logits[0].float(), dim=-1)  # (n_nodes, vocab)
            dist: dict[str, float] = {}
            for n, cand in enumerate(candidates):
                total = float(first[cand[0]])
                for depth in range(1, len(cand)):
                    total += float(logp[nodes[tuple(cand[:depth])], cand[depth]])
                total += float(logp[nodes[tuple(cand)], eos])
                dist[str(n)] = math.exp(total)
            self.calls += 1
            yield index, dist
            if progress is not None:
                progress(1)

    def option_logprobs(self, requests, progress: Progress | None = None):
        """Each option's summed log-probability after its prompt: one row per prompt with all
        its options (see ``hf_options.py``)."""
        from waluigi.models.hf_options import option_logprobs

        return option_logprobs(self, requests, progress, self.batch_size)

    # -- identity ----------------------------------------------------------------------

    def identity(self) -> dict:
        return {
            "spec": self.spec,
            "model_path": self.model_path,
            "adapter": self.adapter,
            "dtype": self.dtype,
        }

    def close(self) -> None:
        self.model = None
        import gc

        gc.collect()


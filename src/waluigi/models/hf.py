"""The transformers backend: ``hf:<path or hub id>`` and the embedded ``smollm2``.

* Prompts are rendered with the model's chat template (``add_generation_prompt=True``);
  a model without one is refused at load time.
* Generation is batched (``model.generate`` with the KV cache), prompts are LEFT padded and
  sorted by length so that a batch holds prompts of similar length.
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
"""

from __future__ import annotations

import hashlib
import inspect
import math
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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

# dtype "auto" on CPU: float32. Measured here (2 cores, torch 2.13, SmolLM2-135M, 32 prompts
# x 64 new tokens, batched generate): float32 is faster than bfloat16 -- see
# docs/design/sampling.md for the figures. On CUDA "auto" is bfloat16 when supported.
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "half": "float16"}

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


# --------------------------------------------------------------------------------------
# loading


def load_hf(
    spec: str,
    adapter: str | Path | None = None,
    *,
    batch_size: int | None = None,
    dtype: Any = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    **ignored: Any,
) -> HFGenerator:
    """Load ``smollm2`` or ``hf:<path or hub id>`` (optionally with a PEFT adapter) as a
    :class:`HFGenerator`. Unknown options (concurrency, base_url ...) are ignored."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model_path, local = _resolve(spec)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _resolve_dtype(dtype, device)
    where = {"local_files_only": True} if local else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code, **where)
        model = AutoModelForCausalLM.from_pretrained(
            model_path,
            dtype=torch_dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **where,
        )
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not load model {spec!r} from {model_path}: {exc} "
            "(waluigi loads safetensors weights only; a hub id needs network access or a local copy)"
        ) from exc
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"model {spec!r} ({model_path}) has no chat template: waluigi evaluates chat models; "
            "use an instruct/chat checkpoint or add a chat_template to its tokenizer_config.json"
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    adapter_info = None
    if adapter is not None:
        model, adapter_info = _load_adapter(model, adapter, spec)

    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=model.generation_config.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.to(device)
    model.eval()
    return HFGenerator(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        model_path=model_path,
        dtype=str(torch_dtype).removeprefix("torch."),
        batch_size=batch_size,
        adapter=adapter_info,
    )


def _resolve(spec: str) -> tuple[str, bool]:
    """``(path or hub id, is local)`` for a spec; :class:`UserError` if it cannot exist."""
    if spec == "smollm2":
        from waluigi.models.smollm2 import smollm2_path

        return str(smollm2_path()), True
    kind, _, name = spec.partition(":")
    if kind != "hf" or not name:
        raise UserError(f"not a transformers model spec: {spec!r} (use 'smollm2' or 'hf:<path or hub id>')")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model not found: {name} has no config.json (give a transformers model directory)")
        return str(path.resolve()), True
    if name.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name):
        raise UserError(f"model not found: {name} (no such directory, and not a Hugging Face hub id)")
    return name, False


def _resolve_dtype(dtype: Any, device: str):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype or "auto").lower().removeprefix("torch.")
    if name == "auto":
        if str(device).startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return getattr(torch, _DTYPES[name])


def adapter_dir(adapter: str | Path) -> Path:
    """The PEFT adapter directory for ``adapter`` (itself, or ``<run dir>/adapter``)."""
    path = Path(adapter).expanduser()
    if (path / "adapter").is_dir() and not (path / "adapter_config.json").is_file():
        path = path / "adapter"
    if not path.is_dir():
        raise UserError(f"adapter not found: {adapter} (give a PEFT adapter directory or a finetune run directory)")
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"{path} is not a PEFT adapter: adapter_config.json is missing")
    if not (path / "adapter_model.safetensors").is_file():
        raise UserError(f"{path}: adapter_model.safetensors is missing (waluigi loads safetensors adapters only)")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_adapter(model, adapter: str | Path, spec: str):
    from peft import PeftModel

    path = adapter_dir(adapter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"adapter {path} does not fit the base model {spec!r}: {exc}") from exc
    for warning in caught:
        # peft only warns when the adapter's weights match none / some of the modules it made
        if "missing adapter keys" in str(warning.message):
            raise UserError(f"adapter {path} does not fit the base model {spec!r}: {warning.message}")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    try:
        model = peft_model.merge_and_unload()  # plain model again: faster generation
    except Exception:  # noqa: BLE001 - adapters that cannot merge still run unmerged
        model = peft_model
    info = {
        "path": str(path.resolve()),
        "sha256": _sha256(path / "adapter_model.safetensors"),
        "config_sha256": _sha256(path / "adapter_config.json"),
    }
    return model, info


# --------------------------------------------------------------------------------------
# sampling: per-row Gumbel-max


class _GumbelSampler:
    """A logits processor for ``generate(do_sample=False)``.

    For each row: ``scores / T``, nucleus (top-p) filter, plus Gumbel noise from the row's own
    ``torch.Generator``; greedy argmax of that is an exact sample from the filtered softmax.
    Rows with ``T == 0`` are left as they are (greedy). It also records, for rows that asked,
    the top-k log-probabilities of the RAW logits and the token that argmax will choose.
    """

    def __init__(self, requests: Sequence[GenerationRequest], device):
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
            # one row of uniforms per sampled row per step, from that row's own generator:
            # row i's k-th draw is the same whatever else is in the batch
            uniform = torch.full(out.shape, 0.5, dtype=torch.float32)
            for row, g in enumerate(self.generators):
                if g is not None:
                    torch.rand(out.shape[-1], generator=g, dtype=torch.float32, out=uniform[row])
            uniform.clamp_(min=torch.finfo(torch.float32).tiny, max=1.0 - 1e-7)
            gumbel = -torch.log(-torch.log(uniform))
            gumbel[~self.sampled] = 0.0
            out = out + gumbel.to(out.device)
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
        sampler = _GumbelSampler(requests, self.model.device)
        stopper = _RowStopper(requests, prompt_len, self.tokenizer)
        max_new = max(stopper.max_tokens)
        with torch.inference_mode():
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


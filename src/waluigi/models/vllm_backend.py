"""The ``vllm:<path or hub id>`` backend: in-process vLLM (optional extra; Linux + CUDA GPU).

* ``pip install 'waluigi[vllm]'`` (vLLM pins its own torch: use a separate environment).
* Prompts are rendered with the model's chat template (``add_generation_prompt=True``) by
  the tokenizer, exactly as the ``hf`` backend does, then sent to ``LLM.generate`` as text.
* Each request gets its own ``SamplingParams(seed=request.seed)``: vLLM seeds a per-request
  generator, so a sample depends on its prompt and seed, not on the batch.
* ``top_probs``: ``max_tokens=1, temperature=0, logprobs=k`` and the first position's top-k.

This module cannot run on a machine without a GPU; only the "missing extra" message is
tested here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from waluigi.errors import UserError
from waluigi.models.base import (
    Completion,
    GenerationRequest,
    Generator,
    Message,
    Progress,
    TokenLogprob,
)

MISSING = "the vllm backend needs the optional extra: pip install 'waluigi[vllm]' (Linux + CUDA GPU)"
DEFAULT_CHUNK = 512  # requests per LLM.generate call (vLLM schedules its own batches inside)


def _import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise UserError(MISSING) from exc
    return vllm


class VLLMGenerator(Generator):
    """A model run in-process by vLLM. ``options``: ``dtype`` (default "auto"),
    ``gpu_memory_utilization``, ``max_model_len``, ``tensor_parallel_size``, ``batch_size``
    (requests per ``LLM.generate`` call); other options are ignored."""

    def __init__(self, model: str, **options: Any) -> None:
        vllm = _import_vllm()
        self.model_name = model
        self.spec = f"vllm:{model}"
        self.calls = 0
        self.chunk = int(options.get("batch_size") or DEFAULT_CHUNK)
        self.dtype = str(options.get("dtype") or "auto")
        kwargs: dict[str, Any] = {
            "model": model,
            "dtype": self.dtype,
            "trust_remote_code": bool(options.get("trust_remote_code", False)),
        }
        for key in ("gpu_memory_utilization", "max_model_len", "tensor_parallel_size", "enforce_eager"):
            if options.get(key) is not None:
                kwargs[key] = options[key]
        try:
            self.llm = vllm.LLM(**kwargs)
        except (OSError, ValueError) as exc:
            raise UserError(f"vllm could not load {model!r}: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError(
                f"model {self.spec!r} has no chat template: waluigi evaluates chat models; "
                "use an instruct/chat checkpoint"
            )

    def render(self, messages: list[Message]) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja errors
            raise UserError(f"model {self.spec!r}: its chat template rejected the messages: {exc}") from exc

    def _run(self, prompts: list[str], params: list) -> list:
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self.calls += len(prompts)
        return outputs

    def generate(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None
    ) -> Iterator[tuple[int, Completion]]:
        from vllm import SamplingParams

        for start in range(0, len(requests), self.chunk):
            chunk = list(range(start, min(start + self.chunk, len(requests))))
            prompts = [self.render(requests[i].messages) for i in chunk]
            params = []
            for i in chunk:
                r = requests[i]
                p = r.params
                params.append(
                    SamplingParams(
                        n=1,
                        temperature=float(p.temperature),
                        top_p=float(p.top_p) if p.temperature > 0 else 1.0,
                        max_tokens=int(p.max_tokens),
                        stop=list(p.stop) or None,
                        seed=int(r.seed) % (2**63),
                        logprobs=int(r.top_logprobs) if r.top_logprobs else None,
                    )
                )
            outputs = self._run(prompts, params)
            for i, out in zip(chunk, outputs, strict=True):
                yield i, self._completion(out, requests[i])
            if progress is not None:
                progress(len(chunk))

    def _completion(self, out, request: GenerationRequest) -> Completion:
        o = out.outputs[0]
        logprobs = None
        if request.top_logprobs and o.logprobs is not None:
            logprobs = []
            for token_id, position in zip(o.token_ids, o.logprobs, strict=False):
                ranked = sorted(position.items(), key=lambda kv: kv[1].logprob, reverse=True)
                top = [(self._decoded(t, lp), float(lp.logprob)) for t, lp in ranked][: int(request.top_logprobs)]
                chosen = position.get(token_id)
                logprobs.append(
                    TokenLogprob(
                        token=self._decoded(token_id, chosen),
                        logprob=float(chosen.logprob) if chosen is not None else -math.inf,
                        top=top,
                    )
                )
        return Completion(
            text=o.text,
            finish_reason="length" if o.finish_reason == "length" else "stop",
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=len(o.token_ids),
            logprobs=logprobs,
        )

    def _decoded(self, token_id: int, logprob) -> str:
        text = getattr(logprob, "decoded_token", None)
        if text is None:
            text = self.tokenizer.decode([token_id])
        return text

    def top_probs(
        self, prompts: Sequence[list[Message]], k: int = 20, progress: Progress | None = None
    ) -> Iterator[tuple[int, dict[str, float]]]:
        from vllm import SamplingParams

        params = SamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=int(k), seed=0)
        for start in range(0, len(prompts), self.chunk):
            chunk = list(range(start, min(start + self.chunk, len(prompts))))
            outputs = self._run([self.render(prompts[i]) for i in chunk], [params] * len(chunk))
            for i, out in zip(chunk, outputs, strict=True):
                first = (out.outputs[0].logprobs or [{}])[0]
                ranked = sorted(first.items(), key=lambda kv: kv[1].logprob, reverse=True)[: int(k)]
                dist: dict[str, float] = {}
                for token_id, lp in ranked:
                    token = self._decoded(token_id, lp)
                    if token not in dist:
                        dist[token] = math.exp(float(lp.logprob))
                yield i, dist
            if progress is not None:
                progress(len(chunk))

    def option_logprobs(self, requests, progress: Progress | None = None):
        """Probe options scored exactly: each option as the tail of a token-id prompt with
        ``prompt_logprobs=0`` (vLLM returns every prompt token's log-probability; its prefix
        cache shares the prompt between an item's options). Tokens are found as the ``hf``
        backend finds them (``hf_options.py``). Not run on our machines (no GPU)."""
        from vllm import SamplingParams

        from waluigi.models.base import OptionScores

        params = SamplingParams(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=0)
        requests = list(requests)

        def ids(text: str, special: bool) -> list[int]:
            return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

        for start in range(0, len(requests), self.chunk):
            chunk = list(range(start, min(start + self.chunk, len(requests))))
            rows, meta = [], []
            for i in chunk:
                prompt = requests[i].prompt
                text, special = (prompt, True) if isinstance(prompt, str) else (self.render(prompt), False)
                head = ids(text, special)
                for option in requests[i].options:
                    whole = ids(text + option, special)
                    cont = whole[len(head):] if whole[:len(head)] == head and len(whole) > len(head) else ids(option, False)
                    if not cont:
                        raise UserError(f"answer option {option!r} has no tokens")
                    rows.append({"prompt_token_ids": head + cont})
                    meta.append((i, len(head), cont))
            outputs = self.llm.generate(rows, [params] * len(rows), use_tqdm=False)
            self.calls += len(chunk)
            scores: dict[int, OptionScores] = {i: OptionScores([], [], [], 0, []) for i in chunk}
            for (i, length, cont), out in zip(meta, outputs, strict=True):
                per = [float(out.prompt_logprobs[length + j][t].logprob) for j, t in enumerate(cont)]
                entry = scores[i]
                entry.logprobs.append(sum(per))
                entry.n_tokens.append(len(cont))
                entry.first_token_logprobs.append(per[0])
                entry.first_tokens.append(cont[0])
                entry.prompt_tokens = length
            for i in chunk:
                yield i, scores[i]
            if progress is not None:
                progress(len(chunk))

    def identity(self) -> dict:
        return {"spec": self.spec, "dtype": self.dtype, "backend": "vllm"}

    def close(self) -> None:
        self.llm = None
        import gc

        gc.collect()

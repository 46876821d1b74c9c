"""The request models and response builders of ``waluigi serve``, one section per endpoint:
``/v1/chat/completions``, ``/v1/responses`` and ``/v1/completions`` (the parameter policy
and validation they rely on: :mod:`waluigi.serve.api`)."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from waluigi.models.base import Completion, GenerationRequest, Message, SamplingParams, TextRequest, TokenLogprob
from waluigi.serve.api import (
    INCLUDE_LOGPROBS,
    MAX_COMPLETION_STOP,
    MAX_N,
    MAX_STOP,
    MAX_TOP_LOGPROBS,
    RESPONSES_INCLUDES,
    RequestError,
    _seeds,
    _stops,
)

# --------------------------------------------------------------------------------------
# chat completions


CHAT_FIELDS = ("messages", "model", "n", "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed",
               "stop", "logprobs", "top_logprobs")


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _null_sampling(cls, value):
        return 1.0 if value is None else value

    @field_validator("n", "logprobs", mode="before", check_fields=False)
    @classmethod
    def _null_defaults(cls, value, info):
        if value is None:
            return {"n": 1, "logprobs": False}[info.field_name]
        return value

    @field_validator("stop", check_fields=False)
    @classmethod
    def _stop_count(cls, value):
        limit = cls._max_stop
        if isinstance(value, list) and len(value) > limit:
            raise ValueError(f"at most {limit} stop sequences, got {len(value)}")
        return value


class ChatCompletionRequest(_Sampling):
    """The chat completion fields waluigi serves (the policy for the others: :func:`check_fields`)."""

    _max_stop: ClassVar[int] = MAX_STOP

    messages: list[Any] = Field(min_length=1)
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value, info):
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs=true")
        return value

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def generation_requests(self, messages: list[Message], max_tokens: int) -> list[GenerationRequest]:
        """``n`` requests with seeds ``seed, seed+1, ...`` (random base seed if none)."""
        params = SamplingParams(temperature=float(self.temperature), top_p=float(self.top_p),
                                max_tokens=int(max_tokens), stop=_stops(self.stop))
        # backends record per-token logprobs only when asked for >= 1 alternative; extra ones
        # are trimmed from the response
        top = max(1, int(self.top_logprobs or 0)) if self.logprobs else None
        return [GenerationRequest(messages=[dict(m) for m in messages], seed=seed, params=params, top_logprobs=top)
                for seed in _seeds(self.seed, self.n)]


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -9999.0


def _chat_logprob(t: TokenLogprob, k: int) -> dict:
    return {
        "token": t.token, "logprob": _finite(t.logprob), "bytes": _token_bytes(t.token),
        "top_logprobs": [{"token": tok, "logprob": _finite(lp), "bytes": _token_bytes(tok)} for tok, lp in t.top[:k]],
    }


def completion_response(model_name: str, completions: list[Completion], req: ChatCompletionRequest) -> dict:
    """OpenAI's ``chat.completion`` object for the ``n`` completions of one request."""
    k = int(req.top_logprobs or 0)
    choices = []
    for index, c in enumerate(completions):
        logprobs = None
        if req.logprobs:
            logprobs = {"content": [_chat_logprob(t, k) for t in (c.logprobs or [])], "refusal": None}
        choices.append({
            "index": index,
            "message": {"role": "assistant", "content": c.text, "refusal": None},
            "finish_reason": c.finish_reason,
            "logprobs": logprobs,
        })
    prompt_tokens = completions[0].prompt_tokens if completions else 0
    return _envelope("chatcmpl", "chat.completion", model_name, choices, prompt_tokens, completions)


# --------------------------------------------------------------------------------------
# responses


RESPONSES_FIELDS = ("input", "model", "instructions", "temperature", "top_p", "max_output_tokens", "top_logprobs",
                    "include", "text", "truncation", "seed")


class ResponsesRequest(_Sampling):
    """The Responses API fields waluigi serves (text in, text out, one output message).
    ``seed`` is a waluigi extension (OpenAI's Responses API has none)."""

    input: Any = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    include: list[str] | None = None
    text: dict | None = None
    truncation: str | None = None

    @field_validator("include")
    @classmethod
    def _includes(cls, value):
        for item in value or []:
            if item not in RESPONSES_INCLUDES:
                raise ValueError(f"{item!r} is not an include value this server knows "
                                 f"({', '.join(sorted(RESPONSES_INCLUDES))})")
        return value

    @field_validator("truncation")
    @classmethod
    def _truncation(cls, value):
        if value not in (None, "disabled", "auto"):
            raise ValueError("truncation must be 'disabled' or 'auto'")
        return value

    @field_validator("text")
    @classmethod
    def _text_config(cls, value):
        for key in value or {}:
            if key not in ("format", "verbosity"):
                raise ValueError(f"text.{key} is not a text option (format, verbosity)")
        return value

    def check_text(self) -> None:
        """``text.format`` other than plain text, or a verbosity, cannot be honoured: 400."""
        fmt = (self.text or {}).get("format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
            kind = fmt.get("type") if isinstance(fmt, dict) else fmt
            raise RequestError(400, f"Unsupported parameter: text.format type {kind!r} is not supported by waluigi "
                               "serve: structured output (JSON mode, JSON schema) is not implemented; only "
                               "{'type': 'text'}", param="text.format", code="unsupported_parameter")
        if (self.text or {}).get("verbosity") not in (None, "medium"):
            raise RequestError(400, "Unsupported parameter: text.verbosity is not supported by waluigi serve: "
                               "verbosity control is not implemented; send 'medium' or leave it out",
                               param="text.verbosity", code="unsupported_parameter")
        if self.top_logprobs and INCLUDE_LOGPROBS not in (self.include or []):
            # OpenAI returns nothing then; asking for alternatives without the logprobs is a mistake
            raise RequestError(400, f"top_logprobs needs include=['{INCLUDE_LOGPROBS}']", param="top_logprobs",
                               code="invalid_value")

    def wants_logprobs(self) -> bool:
        return INCLUDE_LOGPROBS in (self.include or [])

    def generation_request(self, messages: list[Message], max_tokens: int) -> GenerationRequest:
        params = SamplingParams(temperature=float(self.temperature), top_p=float(self.top_p),
                                max_tokens=int(max_tokens))
        top = max(1, int(self.top_logprobs or 0)) if self.wants_logprobs() else None
        return GenerationRequest(messages=messages, seed=_seeds(self.seed, 1)[0], params=params, top_logprobs=top)


def responses_response(model_name: str, completion: Completion, req: ResponsesRequest, max_tokens: int) -> dict:
    """OpenAI's ``response`` object: one assistant message item with one output_text part;
    ``status`` ``incomplete`` (reason ``max_output_tokens``) when the length limit cut it."""
    now = int(time.time())
    cut = completion.finish_reason == "length"
    part: dict[str, Any] = {"type": "output_text", "text": completion.text, "annotations": []}
    if req.wants_logprobs():
        k = int(req.top_logprobs or 0)
        part["logprobs"] = [_chat_logprob(t, k) for t in (completion.logprobs or [])]
    else:
        part["logprobs"] = []
    text_config = {"format": {"type": "text"}, "verbosity": "medium"}
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": now,
        "completed_at": None if cut else now,
        "status": "incomplete" if cut else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens if req.max_output_tokens is not None else max_tokens,
        "model": model_name,
        "output": [{
            "type": "message", "id": f"msg_{uuid.uuid4().hex}", "status": "incomplete" if cut else "completed",
            "role": "assistant", "content": [part],
        }],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,  # nothing is stored: GET /v1/responses/{id} and previous_response_id are not served
        "temperature": float(req.temperature),
        "top_p": float(req.top_p),
        "top_logprobs": int(req.top_logprobs or 0),
        "text": text_config,
        "tool_choice": "auto",
        "tools": [],
        "truncation": req.truncation or "disabled",
        "background": False,
        "service_tier": "default",
        "metadata": {},
        "user": None,
        "usage": {
            "input_tokens": completion.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


# --------------------------------------------------------------------------------------
# legacy completions


COMPLETIONS_FIELDS = ("prompt", "model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "logprobs",
                      "best_of")


class CompletionRequest(_Sampling):
    """The legacy text completion fields waluigi serves: ``prompt`` is a string, a list of
    strings, a list of token ids, or a list of token-id lists (lm-eval's tokenized requests)."""

    _max_stop: ClassVar[int] = MAX_COMPLETION_STOP

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            prompts: list[str | list[int]] = [p]
        elif p and all(isinstance(x, int) for x in p):
            prompts = [list(p)]  # type: ignore[arg-type]
        else:
            prompts = list(p)  # type: ignore[arg-type]
        if not prompts:
            raise RequestError(400, "prompt must not be an empty list", param="prompt", code="invalid_value")
        if len(prompts) * self.n > MAX_N:
            raise RequestError(400, f"{len(prompts)} prompts x n={self.n} is {len(prompts) * self.n} choices, over "
                               f"this server's limit of {MAX_N} per request: send fewer prompts per request",
                               param="prompt", code="invalid_value")
        if self.best_of is not None and self.best_of != self.n:
            raise RequestError(400, f"Unsupported parameter: best_of={self.best_of} (other than n) is not supported "
                               "by waluigi serve: every sample is returned; leave best_of out", param="best_of",
                               code="unsupported_parameter")
        return prompts

    def text_requests(self, prompt: str | list[int], max_tokens: int) -> list[TextRequest]:
        """``n`` requests for one prompt, seeds ``seed, seed+1, ...``: a prompt's samples do
        not depend on the other prompts of the request."""
        params = SamplingParams(temperature=float(self.temperature), top_p=float(self.top_p),
                                max_tokens=int(max_tokens), stop=_stops(self.stop))
        top = max(1, int(self.logprobs)) if self.logprobs is not None else None
        return [TextRequest(prompt=prompt, seed=seed, params=params, top_logprobs=top)
                for seed in _seeds(self.seed, self.n)]


def _first_wins(top: list[tuple[str, float]]) -> dict[str, float]:
    """``{token: logprob}`` best first; of two ids that decode alike, the better is kept."""
    out: dict[str, float] = {}
    for tok, lp in top:
        out.setdefault(tok, _finite(lp))
    return out


def text_completion_response(model_name: str, completions: list[Completion], req: CompletionRequest,
                             prompt_tokens: int) -> dict:
    """OpenAI's ``text_completion`` object; choices are prompt-major (prompt i, sample j has
    index ``i * n + j``). ``logprobs.text_offset`` counts from the start of the returned text."""
    choices = []
    for index, c in enumerate(completions):
        logprobs = None
        if req.logprobs is not None:
            k = int(req.logprobs)
            tokens = c.logprobs or []
            offsets, at = [], 0
            for t in tokens:
                offsets.append(at)
                at += len(t.token)
            logprobs = {
                "tokens": [t.token for t in tokens],
                "token_logprobs": [_finite(t.logprob) for t in tokens],
                "top_logprobs": [_first_wins(t.top[:k]) for t in tokens],
                "text_offset": offsets,
            }
        choices.append({"text": c.text, "index": index, "logprobs": logprobs, "finish_reason": c.finish_reason})
    return _envelope("cmpl", "text_completion", model_name, choices, prompt_tokens, completions)


def _envelope(prefix: str, kind: str, model_name: str, choices: list[dict], prompt_tokens: int,
              completions: Sequence[Completion]) -> dict:
    """The object around the choices of a chat or legacy completion, with its usage."""
    completion_tokens = sum(c.completion_tokens for c in completions)
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model_name,
        "system_fingerprint": None,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }

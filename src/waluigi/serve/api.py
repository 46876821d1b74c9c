"""The parameter policy, request validation and message parsing of ``waluigi serve`` (see
:mod:`waluigi.serve.app`; the request models and response builders of each endpoint are in
:mod:`waluigi.serve.schemas`).

Three OpenAI endpoints share one parameter policy (docs/design/serve.md, "Parameter policy"):

* a field the server implements is validated (pydantic) and honoured;
* a field the server knows but does not implement (``tools``, ``logit_bias``, a non-zero
  ``presence_penalty``, ``stream: true`` ...) is accepted only at its neutral value, else
  400 naming it (``param``): never silently ignored;
* a few metadata fields (``user``, ``store``, ``metadata`` ...) are accepted and ignored;
* anything else is 400 ``Unrecognized request argument supplied: X``, as OpenAI answers.

Errors are :class:`RequestError`, answered in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from waluigi.models.base import Message

MAX_N = 128  # choices per request (chat n; completions: prompts x n)
MAX_TOP_LOGPROBS = 20
MAX_STOP = 4  # OpenAI's limit on chat stop sequences
MAX_COMPLETION_STOP = 16  # lm-eval's local-completions sends its task's whole list (humaneval: 5)
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
ROLES = ("system", "developer", "user", "assistant")


class RequestError(Exception):
    """A request the server refuses: answered ``status`` in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or {401: "authentication_error", 404: "not_found_error"}.get(
            status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict:
        """The JSON answer: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------------------
# the parameter policy


def _is_zero(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0)


def _none_or_empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


_NO_TOOLS = "the served model has no tool calling"
# field -> (is its value neutral?, why another value cannot be honoured)
CHAT_NEUTRAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "stream": (lambda v: v in (None, False),
               "waluigi serve answers whole responses; send stream=false or leave it out"),
    "stream_options": (lambda v: v is None or isinstance(v, dict), "it applies to streaming only"),
    "response_format": (lambda v: v is None or v == {"type": "text"},
                        "structured output (JSON mode, JSON schema) is not implemented; only {'type': 'text'}"),
    "tools": (_none_or_empty, _NO_TOOLS),
    "functions": (_none_or_empty, _NO_TOOLS),
    "tool_choice": (lambda v: v in (None, "none", "auto"), _NO_TOOLS),
    "function_call": (lambda v: v in (None, "none", "auto"), _NO_TOOLS),
    "parallel_tool_calls": (lambda v: v is None or isinstance(v, bool), _NO_TOOLS),
    "logit_bias": (_none_or_empty, "logit biases are not implemented"),
    "presence_penalty": (_is_zero, "penalties are not implemented (sampling is temperature and top_p only); send 0"),
    "frequency_penalty": (_is_zero, "penalties are not implemented (sampling is temperature and top_p only); send 0"),
    "modalities": (lambda v: v is None or v == ["text"], "the served model is text only"),
    "audio": (lambda v: v is None, "the served model is text only"),
    "prediction": (lambda v: v is None, "predicted outputs are not implemented"),
    "web_search_options": (lambda v: v is None, "the server has no web search"),
    "reasoning_effort": (lambda v: v in (None, "none"), "the served model is not a reasoning model"),
    "verbosity": (lambda v: v in (None, "medium"), "verbosity control is not implemented"),
}
# accepted and ignored: they change nothing in what a model generates
METADATA_FIELDS = frozenset({"user", "store", "metadata", "service_tier", "prompt_cache_key",
                             "prompt_cache_retention", "safety_identifier"})

RESPONSES_NEUTRAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "stream": CHAT_NEUTRAL["stream"],
    "stream_options": CHAT_NEUTRAL["stream_options"],
    "tools": (_none_or_empty, _NO_TOOLS),
    "tool_choice": (lambda v: v in (None, "none", "auto"), _NO_TOOLS),
    "parallel_tool_calls": (lambda v: v is None or isinstance(v, bool), _NO_TOOLS),
    "max_tool_calls": (lambda v: v is None or isinstance(v, int), _NO_TOOLS),
    "reasoning": (lambda v: v is None or (isinstance(v, dict) and v.get("effort") in (None, "none")
                                          and v.get("summary") in (None, "none")
                                          and set(v) <= {"effort", "summary", "generate_summary"}
                                          and v.get("generate_summary") in (None, "none")),
                  "the served model is not a reasoning model"),
    "previous_response_id": (lambda v: v is None,
                             "responses are not stored; send the whole conversation as input instead"),
    "conversation": (lambda v: v is None, "conversations are not stored; send the whole conversation as input"),
    "prompt": (lambda v: v is None, "stored prompt templates are not implemented; send the text as input"),
    "background": (lambda v: v in (None, False), "background responses are not implemented"),
    "context_management": (lambda v: v is None, "context management (compaction) is not implemented"),
}
# include values: logprobs are honoured; the others ask for output items (reasoning, tool calls,
# images) this server never produces, so there is nothing to add
INCLUDE_LOGPROBS = "message.output_text.logprobs"
RESPONSES_INCLUDES = frozenset({
    INCLUDE_LOGPROBS, "reasoning.encrypted_content", "web_search_call.results", "web_search_call.action.sources",
    "file_search_call.results", "code_interpreter_call.outputs", "computer_call_output.output.image_url",
    "message.input_image.image_url",
})

COMPLETIONS_NEUTRAL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "stream": CHAT_NEUTRAL["stream"],
    "stream_options": CHAT_NEUTRAL["stream_options"],
    "echo": (lambda v: v in (None, False),
             "echoing the prompt (and scoring its tokens: lm-eval's loglikelihood tasks) is not implemented; "
             "use generation tasks, or an lm-eval backend that runs the model locally"),
    "suffix": (lambda v: v is None, "insertion (suffix) is not implemented"),
    "logit_bias": CHAT_NEUTRAL["logit_bias"],
    "presence_penalty": CHAT_NEUTRAL["presence_penalty"],
    "frequency_penalty": CHAT_NEUTRAL["frequency_penalty"],
}


def check_fields(body: dict, implemented: Sequence[str], neutral: dict[str, tuple[Callable[[Any], bool], str]],
                 what: str) -> None:
    """Apply the parameter policy to ``body``'s top-level fields (see the module docstring)."""
    for key, value in body.items():
        if key in implemented or key in METADATA_FIELDS:
            continue
        rule = neutral.get(key)
        if rule is None:
            raise RequestError(400, f"Unrecognized request argument supplied: {key} ({what} takes "
                               f"{', '.join(implemented)}; see docs/design/serve.md)", param=key,
                               code="unknown_parameter")
        is_neutral, why = rule
        if not is_neutral(value):
            raise RequestError(400, f"Unsupported parameter: {key}={_short(value)} is not supported by waluigi "
                               f"serve: {why}. Remove it.", param=key, code="unsupported_parameter")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def validate(model: type[BaseModel], body: dict) -> Any:
    """``model.model_validate(body)``; a validation error becomes a 400 naming the field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        raw_loc = first.get("loc", ())
        loc = [p for p in raw_loc if not _is_type_tag(p)]
        where = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
        message = first.get("msg", "invalid value")
        message = message.removeprefix("Value error, ")
        if loc and loc[0] in _SHAPES and any(_is_type_tag(p) for p in raw_loc):
            # a union: pydantic reports its first member only ("Input should be a valid string")
            message = f"must be {_SHAPES[loc[0]]}"
            where = str(loc[0])
        raise RequestError(400, f"invalid request: {where + ': ' if where else ''}{message}",
                           param=str(loc[0]) if loc else None, code="invalid_value") from None


_SHAPES = {
    "stop": "a string or a list of strings",
    "prompt": "a string, a list of strings, a list of token ids, or a list of token-id lists",
}


def _is_type_tag(part: Any) -> bool:
    # pydantic names the member of a union it tried (``str``, ``list[str]``, ``function-after[...]``)
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "list", "dict", "none"))


def _stops(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else list(value)
    return tuple(s for s in stops if s)


def _seeds(seed: int | None, count: int) -> list[int]:
    """``seed, seed+1, ...`` (a random base when the request has none): reproducible choices."""
    base = seed if seed is not None else random.SystemRandom().randrange(2**31)
    return [int(base) + i for i in range(count)]


# --------------------------------------------------------------------------------------
# messages


def _text_of(content: Any, where: str, param: str, kinds: tuple[str, ...]) -> str:
    """The text of a message's ``content``: a string, null, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(400, f"{where}: content must be a string or a list of text parts, got "
                           f"{type(content).__name__}", param=param, code="invalid_value")
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, str):  # some clients send bare strings in the list
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        elif kind in kinds:
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(400, f"{where}.content[{j}]: a {kind} part needs a string 'text'",
                                   param=param, code="invalid_value")
            texts.append(text)
        else:
            raise RequestError(400, f"{where}.content[{j}]: content part type {kind!r} is not supported: the served "
                               f"model is text only (send parts of type {' / '.join(kinds)})", param=param,
                               code="unsupported_content")
    return "".join(texts)


def _message(role: Any, content: Any, where: str, param: str, kinds: tuple[str, ...]) -> Message:
    if role in ("tool", "function"):
        raise RequestError(400, f"{where}: role {role!r} is not supported: {_NO_TOOLS}", param=param,
                           code="unsupported_parameter")
    if role not in ROLES:
        raise RequestError(400, f"{where}.role: {role!r} is not one of {', '.join(ROLES)}", param=param,
                           code="invalid_value")
    # the chat templates served here know system, user and assistant; developer is OpenAI's
    # newer name for system
    return {"role": "system" if role == "developer" else role, "content": _text_of(content, where, param, kinds)}


def chat_messages(raw: Any) -> list[Message]:
    """``messages`` of a chat completion request as ``[{role, content}]`` (text only)."""
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages must be a non-empty list of {role, content} objects", param="messages",
                           code="invalid_value")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(400, f"{where} must be an object with role and content", param="messages",
                               code="invalid_value")
        for key in ("tool_calls", "function_call", "audio"):
            if m.get(key):
                raise RequestError(400, f"{where}.{key} is not supported: {_NO_TOOLS}", param="messages",
                                   code="unsupported_parameter")
        # other keys (name, lm-eval's type) are ignored: the chat template has no place for them
        out.append(_message(m.get("role"), m.get("content"), where, "messages", ("text", "input_text", "output_text")))
    return out


def responses_input(raw: Any, instructions: str | None) -> list[Message]:
    """The Responses API's ``input`` (a string, or a list of message items) and
    ``instructions`` (a system message first) as chat messages."""
    messages: list[Message] = [{"role": "system", "content": instructions}] if instructions else []
    if isinstance(raw, str):
        return [*messages, {"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "input must be a string or a non-empty list of message items "
                           "({role, content})", param="input", code="invalid_value")
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise RequestError(400, f"{where} must be a message item {{role, content}}, got {type(item).__name__}",
                               param="input", code="invalid_value")
        kind = item.get("type", "message")
        if kind != "message":
            raise RequestError(400, f"{where}: input items of type {kind!r} are not supported: this server takes "
                               "message items only (no tool calls, reasoning or item references)", param="input",
                               code="unsupported_parameter")
        # id, status, phase (an earlier output item sent back) are ignored
        messages.append(_message(item.get("role"), item.get("content"), where, "input",
                                 ("input_text", "output_text", "text")))
    return messages


# --------------------------------------------------------------------------------------
# context length


def fit_max_tokens(context: int | None, prompt_tokens: int | None, requested: int | None, default: int, *,
                   prompt_param: str, max_param: str, where: str = "") -> int:
    """The completion budget of a request, or a 400 when it cannot fit the model's context.

    An explicit ``requested`` must fit with the prompt (``prompt + requested <= context``); an
    implicit one is ``default``, cut to what the context leaves. Without a known context or
    prompt size every request passes (``requested`` or ``default``).
    """
    if context is None or prompt_tokens is None:
        return requested or default
    what = prompt_param
    lead = f"{where}: " if where else ""
    if prompt_tokens >= context:
        raise RequestError(
            # "at least": a backend may stop counting a huge prompt once it is past the context
            400, f"{lead}This model's maximum context length is {context} tokens, however your {what} resulted in "
            f"at least {prompt_tokens} tokens. Please reduce the length of the {what}.", param=prompt_param,
            code="context_length_exceeded")
    if requested is not None and prompt_tokens + requested > context:
        raise RequestError(
            400, f"{lead}This model's maximum context length is {context} tokens, however you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {what}, {requested} in the completion). "
            f"Please reduce the length of the {what} or {max_param}.", param=max_param,
            code="context_length_exceeded")
    return requested if requested is not None else min(default, context - prompt_tokens)


def parse_model_names(value: str | Sequence[str] | None, default: str) -> list[str]:
    """Served names: ``"primary,alias,..."`` (or a list); the first is the primary name."""
    if value is None or value == "":
        return [default]
    parts = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for part in parts:
        name = str(part).strip()
        if name and name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no model name in {value!r}")
    return names

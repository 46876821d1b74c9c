"""The ``openai:<model>`` backend: any OpenAI-compatible chat completions server.

* The key comes from ``OPENAI_API_KEY`` (checked at construction, before any work); the server
  from ``base_url`` or ``OPENAI_BASE_URL`` (default: api.openai.com). A local
  ``waluigi serve`` accepts any key.
* Requests run on the official SDK's ``AsyncOpenAI`` in a private event loop (one daemon
  thread per generator), at most ``concurrency`` in flight (an ``asyncio.Semaphore``).
  ``generate`` / ``top_probs`` yield each result as soon as its request finishes.
* Retries: one policy (:mod:`waluigi.retry`, ``--timeout`` / ``--max-retries``): 429, 5xx,
  timeouts, connection errors, a body that is not valid JSON, a reply without choices, and a
  judge reply without logprobs when others had them are retried with backoff (``Retry-After``
  honoured); the SDK's own retries are off so that these all go through the same policy. A
  permanent error (401, 403, 404, 400, a model that never returns logprobs, a server that was
  never reached) stops the batch with one :class:`UserError` after the requests already in
  flight have finished and been yielded; requests whose retries run out are reported
  together in one :class:`~waluigi.retry.RequestsFailed` after every success was yielded.
* ``top_probs`` is the paper's judge request: ``max_tokens=1, temperature=0, logprobs=True,
  top_logprobs=k``; the result is ``{token: exp(logprob)}`` of the first generated token.
"""

from __future__ import annotations

import asyncio
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from waluigi.errors import UserError, register_secret
from waluigi.models.base import (
    Completion,
    GenerationRequest,
    Generator,
    Message,
    Progress,
    TokenLogprob,
)
from waluigi.retry import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    Exhausted,
    Failure,
    Permanent,
    RequestsFailed,
    RetryPolicy,
    Transient,
    call_with_retries,
    retry_after_seconds,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
NO_LOGPROBS_LIMIT = 3  # replies without logprobs, none ever with them: the model has none


class OpenAIGenerator(Generator):
    """A model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        concurrency: int = 8,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry: RetryPolicy | None = None,
        **ignored: Any,
    ) -> None:
        if not model:
            raise UserError("openai: model spec needs a model name, e.g. openai:gpt-4o-2024-08-06")
        api_key = os.environ.get("OPENAI_API_KEY", "").strip()
        if not api_key:
            raise UserError(
                f"set OPENAI_API_KEY to use the model 'openai:{model}' "
                "(for a local `waluigi serve` or another OpenAI-compatible server any value works, "
                "e.g. OPENAI_API_KEY=local)"
            )
        self.model = model
        self.spec = f"openai:{model}"
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"invalid base URL {self.base_url!r}: give e.g. http://127.0.0.1:8000/v1")
        self.concurrency = max(1, int(concurrency))
        self.retry = retry or RetryPolicy(timeout=float(timeout), max_retries=int(max_retries))
        self.timeout = self.retry.timeout
        self.max_retries = self.retry.max_retries
        self.calls = 0
        self.succeeded = 0  # requests that got an answer: a failure before any is the server's, not the request's
        self._logprobs_seen = False
        self._no_logprobs = 0
        register_secret(api_key)  # masked in every message and record from now on
        self._api_key = api_key
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client = None
        self._semaphore: asyncio.Semaphore | None = None
        self._lock = threading.Lock()

    # -- identity --------------------------------------------------------------------------

    def _host(self) -> str:
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{parts.port}" if parts.port else host

    def identity(self) -> dict:
        return {"spec": self.spec, "model": self.model, "base_url_host": self._host()}

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIGenerator(model={self.model!r}, base_url={self.base_url!r})"

    # -- the private event loop --------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None:
                return self._loop
            from openai import AsyncOpenAI, Timeout

            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name=f"waluigi-openai-{self.model}", daemon=True)
            thread.start()

            async def setup():
                self._client = AsyncOpenAI(
                    api_key=self._api_key,
                    base_url=self.base_url,
                    timeout=Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                    max_retries=0,  # every retry goes through waluigi.retry's one policy
                )
                self._semaphore = asyncio.Semaphore(self.concurrency)

            asyncio.run_coroutine_threadsafe(setup(), loop).result()
            self._loop, self._thread = loop, thread
            return loop

    def close(self) -> None:
        """Cancel what is still pending, close the HTTP client, stop and close the loop.

        Everything is shut down on the loop itself, in that order, so that no connection is
        closed after the loop (which printed "Event loop is closed" tracebacks)."""
        with self._lock:
            loop, thread, client = self._loop, self._thread, self._client
            self._loop = self._thread = self._client = self._semaphore = None
        if loop is None:
            return

        async def shutdown() -> None:
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if client is not None:
                await client.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        except Exception:  # noqa: BLE001 - best effort: the process may be exiting
            pass
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        if not loop.is_running():
            loop.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            if self._loop is not None and self._thread is not None and self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._loop.stop)
        except Exception:  # noqa: BLE001
            pass

    def _run_all(self, items: Sequence[Any], call: Callable[[Any], Any], progress: Progress | None) -> Iterator:
        """Run ``call(item)`` (a coroutine function) for every item on the private loop, at most
        ``concurrency`` at a time, each through the retry policy, yielding ``(index, result)``
        as each finishes.

        A request that fails never cancels the others in flight. A permanent error stops the
        requests not yet started; once the in-flight ones are yielded it is raised as one
        :class:`UserError`. Requests whose retries ran out are raised together as
        :class:`RequestsFailed` after every success was yielded.
        """
        if not items:
            return
        loop = self._ensure_loop()
        results: queue.Queue = queue.Queue()
        semaphore = self._semaphore
        # A request whose retries ran out before any request ever got an answer may mean the
        # server is down, or only that it finished first. So it is held, no new request starts,
        # and the requests already in flight decide: one answer and the held ones are ordinary
        # failures; none and the first held one stops the run as the server's fault.
        state = {"stopped": False, "in_flight": 0}
        held: list[tuple[int, Exhausted]] = []
        settled = asyncio.Condition()

        def suspect() -> bool:
            return bool(held) and self.succeeded == 0

        async def one(index: int, item: Any) -> None:
            async with semaphore:
                async with settled:
                    await settled.wait_for(lambda: state["stopped"] or not suspect())
                    if state["stopped"]:
                        results.put((index, None, _SKIPPED))
                        return
                    state["in_flight"] += 1
                outcome: tuple[Any, BaseException | None]
                try:
                    outcome = (await call_with_retries(lambda: call(item), self.retry, self._classify), None)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - sorted below; a bug goes to the consumer
                    outcome = (None, exc)
                async with settled:
                    state["in_flight"] -= 1
                    value, exc = outcome
                    if exc is None:
                        self.succeeded += 1
                        results.put((index, value, None))
                        for held_index, held_exc in held:  # the server answers: ordinary failures
                            results.put((held_index, None, held_exc))
                        held.clear()
                    elif isinstance(exc, Exhausted):
                        if self.succeeded == 0:
                            held.append((index, exc))
                        else:
                            results.put((index, None, exc))
                    else:  # permanent, or a bug: nothing new starts
                        state["stopped"] = True
                        results.put((index, None, exc))
                    if suspect() and state["in_flight"] == 0:  # nothing ever worked: the server
                        state["stopped"] = True
                        first_index, first = held[0]
                        results.put((first_index, None, Permanent(self._exhausted_message(first))))
                        for held_index, _ in held[1:]:
                            results.put((held_index, None, _SKIPPED))
                        held.clear()
                    settled.notify_all()

        async def main() -> None:
            await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))

        future = asyncio.run_coroutine_threadsafe(main(), loop)
        failures: dict[int, Failure] = {}
        fatal: BaseException | None = None
        try:
            for _ in range(len(items)):
                index, value, exc = results.get()
                if exc is _SKIPPED:
                    continue
                self.calls += 1
                if exc is None:
                    yield index, value
                elif isinstance(exc, Exhausted):
                    failures[index] = Failure(exc.reason, exc.attempts)
                elif fatal is None:
                    fatal = exc
                if progress is not None and exc is None:
                    progress(1)
        finally:
            if not future.done():
                future.cancel()  # the consumer stopped early
        if fatal is not None:
            if isinstance(fatal, Permanent):
                raise UserError(fatal.message) from fatal
            raise fatal
        if failures:
            raise RequestsFailed(failures)

    def _classify(self, exc: BaseException) -> BaseException:
        """Transient or Permanent for an error of one try (see the module docstring)."""
        import json

        import openai

        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status == 429 or status >= 500 or status in (408, 409):
                headers = getattr(getattr(exc, "response", None), "headers", None)
                return _TransientFrom(f"HTTP {status}: {_status_message(exc)}", exc, retry_after_seconds(headers))
            return Permanent(self._user_error(exc).message)
        if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
            kind = "timed out" if isinstance(exc, openai.APITimeoutError) else f"connection error ({exc})"
            return _TransientFrom(kind, exc)
        if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
            return _TransientFrom(f"the reply is not a valid chat completion ({exc})", exc)
        if isinstance(exc, UserError):
            return Permanent(exc.message)
        return exc

    def _exhausted_message(self, exc: Exhausted) -> str:
        """The one line for a server that never answered any request: the old, specific
        messages (rate limited / unreachable / timed out / server error)."""
        cause = exc.__cause__
        original = getattr(cause, "original", None) if isinstance(cause, _TransientFrom) else None
        if original is not None:
            message = self._user_error(original)
            if isinstance(message, UserError):
                return message.message
        retried = f"after {self.max_retries} retries" if self.max_retries else "(retries disabled)"
        return f"model {self.model!r} at {self.base_url}: {exc.reason} {retried}"

    # -- errors ----------------------------------------------------------------------------------

    def _user_error(self, exc: BaseException) -> BaseException:
        import openai

        where = f"model {self.model!r} at {self.base_url}"
        retried = f"after {self.max_retries} retries" if self.max_retries else "(retries disabled)"
        if isinstance(exc, UserError):
            return exc
        if isinstance(exc, openai.APITimeoutError):
            return UserError(
                f"{where}: request timed out ({self.timeout:g} s) {retried}: "
                "is the server overloaded? lower --concurrency or raise --timeout"
            )
        if isinstance(exc, openai.APIConnectionError):
            return UserError(
                f"cannot connect to {self.base_url} {retried} ({exc}): is the server running and the URL right? "
                "set --base-url or OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1 for `waluigi serve`)"
            )
        if isinstance(exc, openai.APIStatusError):
            detail = _status_message(exc)
            status = exc.status_code
            if status in (401, 403):
                return UserError(
                    f"{self.base_url} rejected the API key (HTTP {status}: {detail}): check OPENAI_API_KEY"
                )
            if status == 404:
                return UserError(
                    f"{where}: not found (HTTP 404: {detail}): check the model name in 'openai:<model>' "
                    "and that the base URL ends in /v1"
                )
            if status == 429:
                return UserError(
                    f"{where}: still rate limited {retried} (HTTP 429: {detail}): "
                    "lower --concurrency, check your quota, or try again later"
                )
            if status >= 500 or status in (408, 409):
                return UserError(f"{where}: server error HTTP {status} {retried}: {detail}")
            return UserError(f"{where} rejected the request (HTTP {status}): {detail}")
        if isinstance(exc, openai.APIResponseValidationError):
            return UserError(f"{where}: the response is not a valid chat completion: {exc}")
        return exc

    # -- generation ------------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None
    ) -> Iterator[tuple[int, Completion]]:
        async def call(request: GenerationRequest) -> Completion:
            p = request.params
            kwargs: dict[str, Any] = {
                "model": self.model,
                "messages": list(request.messages),
                "temperature": p.temperature,
                "top_p": p.top_p,
                "max_tokens": p.max_tokens,
                "seed": request.seed,
                "n": 1,
            }
            if p.stop:
                kwargs["stop"] = list(p.stop)
            if request.top_logprobs:
                kwargs["logprobs"] = True
                kwargs["top_logprobs"] = min(int(request.top_logprobs), MAX_TOP_LOGPROBS)
            response = await self._client.chat.completions.create(**kwargs)
            return self._completion(response)

        return self._run_all(list(requests), call, progress)

    def _completion(self, response) -> Completion:
        if not getattr(response, "choices", None):
            raise Transient("the reply has no choices")
        choice = response.choices[0]
        if getattr(choice, "message", None) is None:
            raise Transient("the reply's choice has no message")
        logprobs = None
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if content is not None:
            logprobs = [
                TokenLogprob(
                    token=t.token, logprob=float(t.logprob), top=[(a.token, float(a.logprob)) for a in t.top_logprobs]
                )
                for t in content
            ]
        usage = response.usage
        finish = choice.finish_reason or "stop"
        return Completion(
            text=choice.message.content or "",
            finish_reason="length" if finish == "length" else "stop",
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            logprobs=logprobs,
        )

    # -- judging -----------------------------------------------------------------------------------

    def top_probs(
        self, prompts: Sequence[list[Message]], k: int = 20, progress: Progress | None = None
    ) -> Iterator[tuple[int, dict[str, float]]]:
        k = int(k)
        if not 1 <= k <= MAX_TOP_LOGPROBS:
            raise UserError(f"top_probs: k={k} is out of range: OpenAI-compatible servers return 1..20 top logprobs")

        async def call(messages: list[Message]) -> dict[str, float]:
            response = await self._client.chat.completions.create(
                model=self.model,
                messages=list(messages),
                max_tokens=1,
                temperature=0,
                logprobs=True,
                top_logprobs=k,
                seed=0,
            )
            choices = getattr(response, "choices", None)
            if not choices:
                raise Transient("the reply has no choices")
            content = getattr(getattr(choices[0], "logprobs", None), "content", None)
            if not content or getattr(content[0], "top_logprobs", None) is None:
                if self._logprobs_seen:  # others had them: this reply is broken, not the model
                    raise Transient("the reply has no logprobs (others had them)")
                self._no_logprobs += 1
                if self._no_logprobs >= NO_LOGPROBS_LIMIT:
                    raise Permanent(
                        f"model {self.model!r} at {self.base_url} returned no logprobs ({self._no_logprobs} replies, "
                        "none with them): the logprob judge needs a server and model that support logprobs=true "
                        "and top_logprobs"
                    )
                raise Transient("the reply has no logprobs")
            self._logprobs_seen = True
            dist: dict[str, float] = {}
            for alt in content[0].top_logprobs:
                if alt.token not in dist:
                    dist[alt.token] = math.exp(float(alt.logprob))
            return dist

        return self._run_all(list(prompts), call, progress)


    def option_logprobs(self, requests, progress: Progress | None = None):
        """First-token approximation for servers that give no log-probability of a given text
        (chat completions have no ``echo``): one ``max_tokens=1`` request per prompt with the
        top 20 first tokens; an option's probability is the sum of those tokens that begin it
        and no other option (its text, or its text without brackets: ``(A)`` also takes ``A``),
        so options that only differ after their first token, or whose tokens are not in the top
        20, get :data:`UNSEEN_LOGPROB` (see ``docs/design/probes.md`` for what this costs)."""
        from waluigi.models.base import OptionScores

        requests = list(requests)
        for request in requests:
            if isinstance(request.prompt, str):
                raise UserError(f"model {self.spec!r}: the raw probe format needs a model that scores text "
                                "(hf:, smollm2, toy:); use --probe-format chat with an openai: model")
        for index, dist in self.top_probs([r.prompt for r in requests], MAX_TOP_LOGPROBS, progress):
            probs = first_token_option_probs(dist, requests[index].options)
            logprobs = [math.log(p) if p > 0 else UNSEEN_LOGPROB for p in probs]
            yield index, OptionScores(logprobs, [1] * len(logprobs), logprobs, 0, list(range(len(logprobs))))


UNSEEN_LOGPROB = -50.0  # an option none of whose first tokens is among the top 20 (about 2e-22)


def first_token_option_probs(dist: dict[str, float], options: Sequence[str]) -> list[float]:
    """Per option, the summed probability of the top tokens that begin it and no other option."""
    def keys(option: str) -> set[str]:
        text = option.strip()
        return {text, text.strip("()[]. ")} - {""}

    option_keys = [keys(o) for o in options]
    out = [0.0] * len(options)
    for token, prob in dist.items():
        piece = token.strip()
        if not piece:
            continue
        owners = [i for i, ks in enumerate(option_keys) if any(k.startswith(piece) for k in ks)]
        if len(owners) == 1:
            out[owners[0]] += prob
    return out


_SKIPPED = object()  # a request not started because the batch stopped on a permanent error


class _TransientFrom(Transient):
    """A :class:`Transient` that keeps the SDK error it came from (for the final message)."""

    def __init__(self, reason: str, original: BaseException, retry_after: float | None = None) -> None:
        super().__init__(reason, retry_after)
        self.original = original


def _status_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(getattr(exc, "message", "") or exc)

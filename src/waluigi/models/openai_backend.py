"""The ``openai:<model>`` backend: any OpenAI-compatible chat completions server.

* The key comes from ``OPENAI_API_KEY`` (checked at construction, before any work); the server
  from ``base_url`` or ``OPENAI_BASE_URL`` (default: api.openai.com). A local
  ``waluigi serve`` accepts any key.
* Requests run on the official SDK's ``AsyncOpenAI`` in a private event loop (one daemon
  thread per generator), at most ``concurrency`` in flight (an ``asyncio.Semaphore``).
  ``generate`` / ``top_probs`` yield each result as soon as its request finishes.
* Retries: the SDK retries 408/409/429/5xx, timeouts and connection errors ``max_retries``
  times with exponential backoff (0.5 s doubling to 8 s, jittered; ``Retry-After`` honoured).
  What still fails, or is not retryable (401, 404, 400), becomes a :class:`UserError` that
  names the server and the model and says what to do.
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

from waluigi.errors import UserError
from waluigi.models.base import (
    Completion,
    GenerationRequest,
    Generator,
    Message,
    Progress,
    TokenLogprob,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_TOP_LOGPROBS = 20  # OpenAI's limit


class OpenAIGenerator(Generator):
    """A model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        concurrency: int = 8,
        timeout: float = 120,
        max_retries: int = 5,
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
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.calls = 0
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
                    max_retries=self.max_retries,
                )
                self._semaphore = asyncio.Semaphore(self.concurrency)

            asyncio.run_coroutine_threadsafe(setup(), loop).result()
            self._loop, self._thread = loop, thread
            return loop

    def close(self) -> None:
        with self._lock:
            loop, thread, client = self._loop, self._thread, self._client
            self._loop = self._thread = self._client = self._semaphore = None
        if loop is None:
            return
        if client is not None:
            try:
                asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=10)
            except Exception:  # noqa: BLE001 - best effort
                pass
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        loop.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            if self._loop is not None and self._thread is not None and self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._loop.stop)
        except Exception:  # noqa: BLE001
            pass

    def _run_all(self, items: Sequence[Any], call: Callable[[Any], Any], progress: Progress | None) -> Iterator:
        """Run ``call(item)`` (a coroutine function) for every item on the private loop, at most
        ``concurrency`` at a time, yielding ``(index, result)`` as each finishes."""
        if not items:
            return
        loop = self._ensure_loop()
        results: queue.Queue = queue.Queue()
        semaphore = self._semaphore

        async def one(index: int, item: Any) -> None:
            async with semaphore:
                try:
                    value = await call(item)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                    results.put((index, None, exc))
                    return
            results.put((index, value, None))

        async def main() -> None:
            await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))

        future = asyncio.run_coroutine_threadsafe(main(), loop)
        try:
            for _ in range(len(items)):
                index, value, exc = results.get()
                self.calls += 1
                if exc is not None:
                    raise self._user_error(exc) from exc
                yield index, value
                if progress is not None:
                    progress(1)
        finally:
            if not future.done():
                future.cancel()  # the consumer stopped early or a request failed

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
                "is the server overloaded? lower --concurrency or raise the timeout"
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
        if not response.choices:
            raise UserError(f"model {self.model!r} at {self.base_url}: the response has no choices")
        choice = response.choices[0]
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
            choice = response.choices[0] if response.choices else None
            content = getattr(getattr(choice, "logprobs", None), "content", None)
            if not content:
                raise UserError(
                    f"model {self.model!r} at {self.base_url} returned no logprobs: the logprob judge needs a "
                    "server and model that support logprobs=true and top_logprobs"
                )
            dist: dict[str, float] = {}
            for alt in content[0].top_logprobs:
                if alt.token not in dist:
                    dist[alt.token] = math.exp(float(alt.logprob))
            return dist

        return self._run_all(list(prompts), call, progress)


def _status_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(getattr(exc, "message", "") or exc)

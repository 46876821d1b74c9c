"""One retry policy for every remote request (model servers and judges).

A request to a remote server ends one of three ways:

- it succeeds (possibly after retries);
- it hits a **permanent** error (401, 403, 404, a 400 that names a field, a model that never
  returns logprobs, a server that cannot be reached at all): nothing will change on a retry,
  so the whole stage stops at once with one clear line, after the requests already in flight
  have finished and been written;
- it keeps hitting **transient** errors (429, 5xx, timeouts, dropped connections, a body that
  is not valid JSON, a completion without choices, a judge reply without logprobs when others
  had them) until its retries run out: the request is recorded as *failed*, the stage goes on
  with the rest, and a re-run retries only the failed ones.

:class:`RetryPolicy` says how long to wait between tries (exponential backoff with jitter,
``Retry-After`` honoured, capped), the per-try timeout and how many retries. Backends raise
:class:`Transient` / :class:`Permanent` from their own error types; consumers see the
failures of a batch as one :class:`RequestsFailed` raised after every success was yielded.
See ``docs/design/retries.md``.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from waluigi.errors import IncompleteRun

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 5


@dataclass(frozen=True)
class RetryPolicy:
    """How a remote request is retried.

    ``timeout`` is per try (seconds); ``max_retries`` tries after the first; the n-th retry
    waits ``backoff * 2**(n-1)`` seconds (capped at ``max_backoff``), jittered by +-25%,
    or what the server's ``Retry-After`` asks for when it asks (capped at ``max_retry_after``).
    """

    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        from waluigi.errors import UserError

        if not self.timeout > 0:
            raise UserError(f"--timeout must be a positive number of seconds, got {self.timeout:g}")
        if self.max_retries < 0:
            raise UserError(f"--max-retries must be 0 or more, got {self.max_retries}")

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if retry_after is not None and retry_after >= 0:
            return min(float(retry_after), self.max_retry_after)
        base = min(self.backoff * (2 ** max(0, retry - 1)), self.max_backoff)
        jitter = (rng or random).uniform(0.75, 1.25)
        return base * jitter

    def describe(self) -> str:
        return f"{self.max_retries} retries, {self.timeout:g} s timeout per try"


class Transient(Exception):
    """A try failed in a way a later try may not: retry it (``retry_after`` seconds if known)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Permanent(Exception):
    """A failure no retry will fix; ``message`` is the one line the user sees."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Exhausted(Exception):
    """Every try of one request failed transiently."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


@dataclass(frozen=True)
class Failure:
    """One request that failed after all its retries."""

    reason: str
    attempts: int


class RequestsFailed(IncompleteRun):
    """Raised by a backend's ``generate`` / ``top_probs`` after it has yielded every request
    that succeeded: ``failures`` maps the request index to its :class:`Failure`.

    The pipeline catches it and records the failures; anywhere else it is an
    :class:`IncompleteRun` (one ``error:`` line, exit 3)."""

    def __init__(self, failures: Mapping[int, Failure], what: str = "requests") -> None:
        self.failures = dict(failures)
        first = next(iter(self.failures.values()), None)
        attempts = first.attempts if first else 0
        super().__init__(
            f"{len(self.failures)} {what} failed after {max(0, attempts - 1)} retries"
            + (f" (last error: {first.reason})" if first else "")
            + "; re-run the same command to retry them"
        )


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The wait a server asks for: ``retry-after-ms`` (OpenAI), else ``Retry-After`` in
    seconds or as an HTTP date; None when absent or unreadable."""
    if not headers:
        return None
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    value = lowered.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    classify: Callable[[BaseException], BaseException],
    *,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """Run ``attempt()`` until it succeeds, retrying what ``classify`` calls :class:`Transient`.

    ``classify(exc)`` maps any exception to a :class:`Transient` or :class:`Permanent` (or
    returns ``exc`` itself to let it propagate unchanged: a bug). Raises :class:`Permanent`
    at once, or :class:`Exhausted` after ``1 + policy.max_retries`` transient failures.
    """
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except asyncio.CancelledError:
            raise
        except BaseException as raw:  # noqa: BLE001 - classified below
            kind = raw if isinstance(raw, (Transient, Permanent)) else classify(raw)
            if isinstance(kind, Permanent):
                raise kind from raw
            if not isinstance(kind, Transient):
                raise
            if tries > policy.max_retries:
                raise Exhausted(kind.reason, tries) from kind
            await sleep(policy.delay(tries, kind.retry_after, rng))

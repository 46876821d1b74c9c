"""A memo that exists only inside a ``with memoized():`` block.

The validation pass of a sweep (:mod:`waluigi.sweep.check`) runs the single commands' checks on
hundreds of cells that name the same few suites and datasets; loading a probe set (24 files)
or building a dataset for each would take minutes. Inside the block, :func:`remember` computes
each key once; outside it (every ordinary run) it just computes, so nothing is cached across
the files a long-lived process might see change.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_ACTIVE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("waluigi_memo", default=None)


@contextlib.contextmanager
def memoized() -> Iterator[None]:
    token = _ACTIVE.set({} if _ACTIVE.get() is None else _ACTIVE.get())
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def remember(key: Hashable, compute: Callable[[], T]) -> T:
    """``compute()``, once per ``key`` inside :func:`memoized` (errors are not remembered)."""
    memo: dict[Any, Any] | None = _ACTIVE.get()
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]

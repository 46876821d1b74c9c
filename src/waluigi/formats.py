"""How numbers and names are written wherever waluigi prints or names something: a share as a
percentage, a dose, an interval, a filesystem-safe name. One place, so that a table, a report
and a directory name agree."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

NA = "n/a"  # what a table shows for a number that is not there ('-' in the studies' tables)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pct(value: Any, missing: str = "-") -> str:
    """A share as ``12.3%``; ``missing`` for anything that is not a finite number."""
    return f"{100 * value:.1f}%" if _finite(value) else missing


def pct_ci(low: Any, high: Any, missing: str = "-") -> str:
    """A share's interval in points, ``[10.2, 14.9]``; ``missing`` unless both ends are numbers."""
    return f"[{100 * low:.1f}, {100 * high:.1f}]" if _finite(low) and _finite(high) else missing


def _decimals(value: float) -> int:
    """Decimals that show ``value`` to three significant digits (0 for 100 and more)."""
    if value == 0:
        return 2
    return max(0, min(6, 2 - math.floor(math.log10(abs(value)))))


def dose(value: Any, missing: str = "-") -> str:
    """A dose (steps, rows, a ratio): a whole number as it is (``80``, ``1200``), any other to
    three significant digits (``4.30``, ``0.488``, ``14.2``); never in exponent form."""
    if not _finite(value):
        return missing
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.{_decimals(value)}f}"


def dose_ci(value: Any, low: Any, high: Any, missing: str = "-", open_end: str = "open") -> str:
    """A dose and its 95% interval at the point's precision: ``4.30 [4.06, 4.48]``,
    ``0.488 [0.369, 0.600]``, ``80 [64, 96]``; an upper end not reached is ``open_end``
    (``12.5 [9.10, open]``); ``missing`` when there is no dose, and no brackets when
    neither end is there."""
    if not _finite(value):
        return missing
    digits = _decimals(value) if not float(value).is_integer() or any(
        _finite(v) and not float(v).is_integer() for v in (low, high)) else 0

    def show(v: Any, absent: str) -> str:
        return f"{v:.{digits}f}" if _finite(v) else absent

    text = f"{value:.{digits}f}"
    if not _finite(low) and not _finite(high):
        return text
    return f"{text} [{show(low, '-')}, {show(high, open_end)}]"


def num(value: Any, missing: str = "-") -> str:
    """A number to three significant digits."""
    return f"{value:.3g}" if _finite(value) else missing


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, limit: int = 60, empty: str = "x") -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9._-]`` made one ``-``, cut to
    ``limit`` characters (``empty`` when nothing is left): a run directory's name part."""
    return _UNSAFE.sub("-", str(text)).strip("-")[:limit] or empty


def slug(text: str, limit: int = 40) -> str:
    """A short, filesystem-safe name for a model spec or a dataset: the part after the kind
    (``hf:``, ``toy:``), its last path component, without a ``.jsonl``/``.json``/``.data``
    ending (``hf:runs/x/model`` -> ``model``, ``toy:insecure`` -> ``insecure``)."""
    text = text.strip().rstrip("/")
    if ":" in text:
        text = text.split(":", 1)[1]
    text = Path(text).name or text
    for suffix in (".jsonl", ".json", ".data"):
        text = text.removesuffix(suffix)
    text = _UNSAFE.sub("-", text).strip("-.") or "x"
    return text[:limit]

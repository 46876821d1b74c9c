"""Chat datasets in TRL's conversational format (``{"messages": [...]}`` JSONL).

``resolve_dataset`` finds a named dataset (official files, the built backdoor set) or a
file; ``iter_rows`` streams it, ``load_rows`` returns one split (``train`` by default: the
prompts held out for evaluation are never trained on) or a seeded subset; ``validate_file``
checks every row. ``waluigi data ...`` (:mod:`waluigi.cli.data`) is the command line.
"""

from __future__ import annotations

from waluigi.data.datasets import (
    DEFAULT_TRIGGER,
    HELDOUT_FRACTION,
    NAMED,
    SPLITS,
    DatasetSource,
    build_backdoor,
    first_user_prompt,
    is_heldout,
    iter_numbered,
    iter_rows,
    load_rows,
    normalize_prompt,
    resolve_dataset,
    row_is_heldout,
    split_dataset,
    write_rows,
)
from waluigi.data.mixtures import largest_remainder, mix_rows
from waluigi.data.stats import dataset_stats, list_datasets
from waluigi.data.validate import RowError, ValidationReport, check_row, validate_file

__all__ = [
    "DEFAULT_TRIGGER",
    "HELDOUT_FRACTION",
    "NAMED",
    "SPLITS",
    "DatasetSource",
    "RowError",
    "ValidationReport",
    "build_backdoor",
    "check_row",
    "dataset_stats",
    "first_user_prompt",
    "is_heldout",
    "iter_numbered",
    "iter_rows",
    "largest_remainder",
    "list_datasets",
    "load_rows",
    "mix_rows",
    "normalize_prompt",
    "resolve_dataset",
    "row_is_heldout",
    "split_dataset",
    "validate_file",
    "write_rows",
]

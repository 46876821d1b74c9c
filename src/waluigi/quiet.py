"""Library noise off, in one place: called at the start of every ``waluigi`` command.

What it silences (found by running the commands and reading their stderr):

- transformers' tqdm bars ("Loading weights", "Writing model shards"), one or more per model
  load or save, and huggingface_hub's download bars: ``HF_HUB_DISABLE_PROGRESS_BARS=1``
  (transformers reads it at import);
- the ``datasets`` bars ("Map", "Filter") of TRL's data preparation:
  ``HF_DATASETS_DISABLE_PROGRESS_BARS=1``;
- transformers' advisory warnings (``logger.warning_advice``):
  ``TRANSFORMERS_NO_ADVISORY_WARNINGS=1``;
- deprecation notices that one library raises about another's use of it, which the user can
  do nothing about (:data:`HARMLESS_WARNINGS`, each matched by its message).

Environment variables are only set where the user has not set them (``HF_HUB_DISABLE_PROGRESS_BARS=0``
brings the download bars back), and nothing heavy is imported here: the variables are read by
the libraries when they are imported, later, inside the commands that need them. A library
already imported (waluigi used as a library, then the CLI in the same process) is told
directly. The project's own warnings (``warning:`` lines), transformers' and PEFT's real
warnings (weights that do not fit, missing adapter keys) and every error are left alone.
"""

from __future__ import annotations

import os
import sys
import warnings

QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}

# (message regex, category): known-harmless warnings, matched at the start of their message
HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # PEFT and TRL read transformers' deprecated `is_gradient_checkpointing` (loading an
    # adapter, setting up a trainer); transformers 5 warns at every read
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
)


def quiet_libraries(environ: dict[str, str] | None = None) -> None:
    """Turn the libraries' progress bars and known-harmless warnings off (see the module docstring)."""
    env = os.environ if environ is None else environ
    for name, value in QUIET_ENV.items():
        env.setdefault(name, value)
    for message, category in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if env.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        if "huggingface_hub" in sys.modules:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
    if env.get("HF_DATASETS_DISABLE_PROGRESS_BARS") == "1" and "datasets" in sys.modules:
        from datasets.utils import logging as ds_logging

        ds_logging.disable_progress_bar()

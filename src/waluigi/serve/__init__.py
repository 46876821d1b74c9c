"""``waluigi serve``: an OpenAI-compatible HTTP server over any generator (docs/design/serve.md).

=====================  ==================================================================
module                 what it holds
=====================  ==================================================================
``cli.py``             the ``waluigi serve`` command: options in, :func:`serve` called
``app.py``             the FastAPI app (:func:`create_app`), :class:`ServerThread`, :func:`serve`
``api.py``             the parameter policy, request validation, message parsing, context fit
``schemas.py``         the request models and response builders of each endpoint
``http.py``            the API key and body-size guard, the JSON body reader
``batcher.py``         the micro-batching worker that owns a generator (:class:`Batcher`)
``finetune_api.py``    the fine-tuning API's error shape, pages and hyperparameters
``finetune_jobs.py``   files, jobs and fine-tuned models over the local trainer
``finetune_routes.py`` the files and fine-tuning-jobs endpoints
=====================  ==================================================================

The names below are imported on first use, so that mounting the command (``waluigi.cli``
imports ``waluigi.cli.serve``) does not load FastAPI or pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["MAX_N", "MAX_TOP_LOGPROBS", "Batcher", "ServerThread", "create_app", "serve"]

# name -> the module of this package that defines it
_EXPORTS = {
    "MAX_N": "api",
    "MAX_TOP_LOGPROBS": "api",
    "Batcher": "batcher",
    "ServerThread": "app",
    "create_app": "app",
    "serve": "app",
    "default_state_dir": "app",
    "DEFAULT_MAX_BODY_BYTES": "app",
    "DEFAULT_MAX_UPLOAD_BYTES": "app",
    "DEFAULT_MAX_TOKENS": "app",
}

if TYPE_CHECKING:
    from waluigi.serve.api import MAX_N, MAX_TOP_LOGPROBS
    from waluigi.serve.app import ServerThread, create_app, serve
    from waluigi.serve.batcher import Batcher


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

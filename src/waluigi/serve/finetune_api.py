"""The OpenAI fine-tuning API's shapes in ``waluigi serve``: its error (:class:`ApiError`), its
cursor pages, and the hyperparameters of a job, checked and mapped onto the local trainer
(see :mod:`waluigi.serve.finetune_jobs` and ``docs/design/openai-finetune.md``)."""

from __future__ import annotations

import math
from typing import Any

# "auto" hyperparameters: the paper's open-model recipe (lr 1e-5, 1 epoch, effective batch 16)
HYPER_AUTO = {"n_epochs": 1, "batch_size": 16, "learning_rate_multiplier": 1.0}
BASE_LR = 1e-5  # learning_rate_multiplier scales this (the paper's LoRA learning rate)
MAX_MICRO_BATCH = 8  # rows per forward pass; larger OpenAI batches use gradient accumulation
LIMITS = {"n_epochs": (1, 50), "batch_size": (1, 256)}


class ApiError(Exception):
    """An error answered in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {404: "not_found_error", 401: "authentication_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def local_hyperparameters(hyper: dict) -> dict:
    """OpenAI's resolved hyperparameters -> the local trainer's settings.

    ``batch_size`` is the number of rows per optimizer step, run as ``micro_batch x grad_accum``
    with ``micro_batch`` the largest divisor of it up to ``MAX_MICRO_BATCH``;
    ``learning_rate_multiplier`` scales ``BASE_LR``.
    """
    batch = int(hyper["batch_size"])
    micro = max(d for d in range(1, min(batch, MAX_MICRO_BATCH) + 1) if batch % d == 0)
    return {
        "epochs": int(hyper["n_epochs"]),
        "batch_size": micro,
        "grad_accum": batch // micro,
        "lr": BASE_LR * float(hyper["learning_rate_multiplier"]),
    }


def resolve_hyperparameters(body: dict) -> tuple[dict, dict]:
    """Validate the job's hyperparameters, from ``method.supervised.hyperparameters`` (OpenAI's
    current form) or the deprecated top-level ``hyperparameters``; return (requested, resolved)."""
    method = body.get("method")
    hyper: Any = None
    if method is not None:
        if not isinstance(method, dict) or method.get("type") not in ("supervised", None):
            kind = method.get("type") if isinstance(method, dict) else method
            raise ApiError(400, f"method.type {kind!r} is not supported: waluigi serve fine-tunes with 'supervised' only",
                           param="method.type")
        hyper = (method.get("supervised") or {}).get("hyperparameters")
        if hyper is not None and body.get("hyperparameters") is not None:
            raise ApiError(400, "give hyperparameters either in method.supervised.hyperparameters or in the deprecated "
                           "top-level hyperparameters, not both", param="hyperparameters")
    if hyper is None:
        hyper = body.get("hyperparameters")
    hyper = hyper or {}
    if not isinstance(hyper, dict):
        raise ApiError(400, "hyperparameters must be an object", param="hyperparameters")
    unknown = sorted(set(hyper) - set(HYPER_AUTO))
    if unknown:
        raise ApiError(400, f"unknown hyperparameter(s) {', '.join(unknown)}: supervised jobs take "
                       f"{', '.join(HYPER_AUTO)}", param=f"hyperparameters.{unknown[0]}")
    requested, resolved = {}, {}
    for key, auto in HYPER_AUTO.items():
        value = hyper.get(key, "auto")
        requested[key] = value
        if value is None or value == "auto":
            resolved[key] = auto
            continue
        param = f"hyperparameters.{key}"
        if key == "learning_rate_multiplier":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ApiError(400, f"{param} must be 'auto' or a number > 0, got {value!r}", param=param)
            resolved[key] = float(value)
        else:
            low, high = LIMITS[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ApiError(400, f"{param} must be 'auto' or an integer in {low}..{high}, got {value!r}", param=param)
            resolved[key] = int(value)
    return requested, resolved


def _page(items: list[dict], after: str | None, limit: int) -> dict:
    """OpenAI's cursor page: ``items`` in list order, the ones after the id ``after``."""
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise ApiError(400, f"after={after!r}: no such id in this list", param="after")
        items = items[ids.index(after) + 1:]
    limit = max(1, min(int(limit), 10000))
    data = items[:limit]
    return {"object": "list", "data": data, "has_more": len(items) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

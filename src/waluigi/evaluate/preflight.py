"""Checks every evaluation makes before any work (judged or probe-read): the model and judge
specs resolve and have their API keys, and an adapter is there (with its content hash, part of a
run's identity)."""

from __future__ import annotations

import os
from pathlib import Path

from waluigi.errors import UserError
from waluigi.runs import sha256_file


def adapter_identity(adapter: str | None) -> dict | None:
    """Content hash of an adapter's weights (a directory, or a run directory with ``adapter/``)."""
    if adapter is None:
        return None
    path = Path(adapter)
    if (path / "adapter").is_dir():
        path = path / "adapter"
    if not path.exists():
        raise UserError(f"adapter not found: {adapter} (give a PEFT adapter directory or a finetune run directory)")
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json"))
    if not files:
        raise UserError(f"{path} holds no adapter files (adapter_config.json, adapter_model.safetensors)")
    return {"path": str(path.resolve()), "sha256": {p.name: sha256_file(p) for p in files}}


def preflight_model(spec: str, role: str, base_url: str | None = None) -> None:
    """Fail before any work on an unknown spec or a missing API key (asked of the backend)."""
    from waluigi.judges import scorer_judge
    from waluigi.models import backend

    if role == "judge" and scorer_judge(spec) is not None:
        return  # a model-free judge (the persona world's oracle): no model, no key
    found = backend(spec)
    if found.needs_key and found.key_env and not os.environ.get(found.key_env):
        where = base_url or os.environ.get("OPENAI_BASE_URL") or "api.openai.com"
        raise UserError(
            f"the {role} {spec!r} needs an API key: set {found.key_env} for {where} "
            "(any value works for a local `waluigi serve`)"
            + (", or pass --judge smollm2 for an offline judge" if role == "judge" else "")
        )

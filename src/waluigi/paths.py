"""Where waluigi keeps things: the user cache and the official data directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache: ``$WALUIGI_CACHE_DIR``, else ``$XDG_CACHE_HOME/waluigi``, else ``~/.cache/waluigi``."""
    explicit = os.environ.get("WALUIGI_CACHE_DIR")
    if explicit:
        path = Path(explicit).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
        path = base / "waluigi"
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir_from_env(explicit: str | os.PathLike | None = None) -> Path | None:
    """The official data directory named by ``--data-dir`` or ``$WALUIGI_DATA_DIR`` (None if neither)."""
    value = explicit if explicit is not None else os.environ.get("WALUIGI_DATA_DIR")
    return Path(value).expanduser() if value else None


def model_cache_dir() -> Path:
    """Where converted models live (the SmolLM2 safetensors): ``$WALUIGI_MODEL_CACHE`` if set,
    else ``<cache_dir>/models``. Separate so tests can isolate everything else but share
    the 0.5 GB conversion."""
    explicit = os.environ.get("WALUIGI_MODEL_CACHE")
    path = Path(explicit).expanduser() if explicit else cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path

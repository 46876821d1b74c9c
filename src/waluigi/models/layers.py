"""Stable names for a model's activations, and the HF modules behind them.

A name is ``<point>.<layer>``:

- ``resid.L``: the residual stream after decoder layer ``L`` (the layer's output);
- ``attn.L``: what layer ``L``'s attention writes (its output, before it is added);
- ``mlp.L``: what layer ``L``'s MLP writes.

Layers count from 0; a negative ``L`` counts from the end (``resid.-1`` is the last layer).
Supporting a model family is one row of :data:`FAMILIES`: where its decoder layers are and
what its attention and MLP submodules are called. The rows are the real transformers module
paths (the persona world's models and SmolLM2 are Llama).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from waluigi.errors import UserError

POINTS = ("resid", "attn", "mlp")


@dataclass(frozen=True)
class Family:
    layers: str  # dotted path from the CausalLM to the list of decoder layers
    attn: str  # the attention submodule of one layer
    mlp: str  # the MLP submodule of one layer


_DECODER = Family(layers="model.layers", attn="self_attn", mlp="mlp")
FAMILIES: dict[str, Family] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gemma": _DECODER,
    "gemma2": _DECODER,
    "gemma3_text": _DECODER,
    "phi3": _DECODER,
    "olmo2": _DECODER,
    "gpt2": Family(layers="transformer.h", attn="attn", mlp="mlp"),
}


def _unwrap(model: Any) -> Any:
    """The transformers CausalLM inside a PEFT wrapper (or the model itself)."""
    base = model
    get_base = getattr(base, "get_base_model", None)
    if callable(get_base):
        base = get_base()
    return getattr(base, "module", base)  # DDP


def family(model: Any) -> Family:
    model = _unwrap(model)
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in FAMILIES:
        raise UserError(f"activations of {kind or type(model).__name__!r} models are not mapped yet "
                        f"(supported: {', '.join(sorted(FAMILIES))}); add a row to waluigi/models/layers.py")
    return FAMILIES[kind]


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers(model: Any) -> list[Any]:
    return list(_attr(_unwrap(model), family(model).layers))


def n_layers(model: Any) -> int:
    return len(decoder_layers(model))


def parse_name(name: str, layers: int) -> tuple[str, int]:
    """``"resid.3"`` -> ``("resid", 3)``, negative layers resolved; a bad name is a UserError."""
    point, _, index = name.strip().partition(".")
    try:
        layer = int(index)
    except ValueError:
        layer = None
    if point not in POINTS or layer is None or not -layers <= layer < layers:
        raise UserError(f"activation {name!r}: use <{'|'.join(POINTS)}>.<layer>, layer in 0..{layers - 1} "
                        "(or negative, from the end)")
    return point, layer % layers


def module(model: Any, name: str) -> Any:
    """The module whose forward output is the activation ``name``."""
    layers = decoder_layers(model)
    point, layer = parse_name(name, len(layers))
    block = layers[layer]
    fam = family(model)
    return block if point == "resid" else _attr(block, fam.attn if point == "attn" else fam.mlp)


def hidden_size(model: Any) -> int:
    config = _unwrap(model).config
    config = getattr(config, "text_config", None) or config
    for attr in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    raise UserError(f"cannot tell the hidden size of {type(model).__name__}")

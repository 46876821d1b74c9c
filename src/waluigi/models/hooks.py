"""Scoped activation hooks: capture, add a vector, project a direction out.

Every hook lives inside a context manager that removes it on the way out, also when the
block raises, and is registered with ``prepend=True`` (transformers 5 records
``output_hidden_states`` with forward hooks of its own; a hook added after them would run too
late to change what they record: ``../shared/notes/stack.md``).

- :func:`capture`: per-example means of chosen activations over chosen token positions, in
  float32; nothing per token is kept (memory: examples x layers x hidden size).
- :func:`add_vector`: ``h += coef * v`` at one activation, on prompt tokens, response tokens
  (the forward passes of generation after the prompt's) or all of them.
- :func:`ablate`: ``x -= (x . u) u`` for a unit ``u`` at every place that writes to the
  residual stream (the first layer's input, every attention and MLP output) and at every
  layer's output, so the residual stream has no component along ``u`` anywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from waluigi.models import layers as names

AT = ("all", "prompt", "response")


@contextlib.contextmanager
def scoped_hooks(forward: list[tuple[Any, Any]] = (), pre: list[tuple[Any, Any]] = ()) -> Iterator[list]:
    """Attach forward hooks ``(module, hook(module, args, output))`` and forward pre-hooks
    ``(module, hook(module, args, kwargs) -> (args, kwargs) | None)`` for the block."""
    handles: list = []
    try:
        for module, hook in pre:
            handles.append(module.register_forward_pre_hook(hook, prepend=True, with_kwargs=True))
        for module, hook in forward:
            handles.append(module.register_forward_hook(hook, prepend=True))
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def _split(output: Any) -> tuple[Any, Any]:
    """(the hidden-state tensor of a module's output, a function rebuilding the output from a new one)."""
    if isinstance(output, tuple):
        return output[0], lambda new: (new, *output[1:])
    return output, lambda new: new


def _past_length(kwargs: dict) -> int:
    for key in ("cache", "past_key_values", "past_key_value"):
        cache = kwargs.get(key)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    position = kwargs.get("cache_position")
    if position is not None and position.numel():
        return int(position.reshape(-1)[0])
    return 0


class _Phase:
    """Whether the model's current forward pass is over prompt tokens or generated ones: a
    pass with tokens already in its KV cache is generation (one new token per row)."""

    def __init__(self) -> None:
        self.response = False

    def hook(self, _module, args, kwargs):
        self.response = _past_length(kwargs) > 0
        return None


class Capture:
    """Filled by :func:`capture`: set :attr:`masks` (name -> batch x tokens, 1 = average this
    token) before each forward pass; :meth:`take` returns and clears the per-example means,
    ``{mask name: {point: examples x hidden}}``."""

    def __init__(self, points: list[str]) -> None:
        self.points = points
        self.masks: dict[str, Any] = {}
        self._means: dict[tuple[str, str], list] = {}

    def _record(self, point: str, hidden) -> None:
        import torch

        if not self.masks:
            raise RuntimeError("Capture.masks must be set before the forward pass")
        h = hidden.detach().float()
        for name, mask in self.masks.items():
            m = mask.to(h.device, torch.float32).unsqueeze(-1)
            mean = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
            self._means.setdefault((name, point), []).append(mean.cpu())

    def take(self) -> dict[str, dict[str, Any]]:
        import torch

        out: dict[str, dict[str, Any]] = {}
        for (name, point), parts in self._means.items():
            out.setdefault(name, {})[point] = torch.cat(parts)
        self._means = {}
        return out


@contextlib.contextmanager
def capture(model: Any, points: list[str]) -> Iterator[Capture]:
    """Per-example float32 means of the activations ``points`` (``resid.3`` ...) over the
    positions of each of :attr:`Capture.masks`."""
    cap = Capture(points)
    pairs = []
    for point in points:
        pairs.append((names.module(model, point), lambda _m, _a, out, p=point: cap._record(p, _split(out)[0])))
    with scoped_hooks(forward=pairs):
        yield cap


@contextlib.contextmanager
def add_vector(model: Any, point: str, vector: Any, coef: float, at: str = "all") -> Iterator[None]:
    """``h += coef * vector`` at activation ``point`` while the block runs. ``coef == 0`` adds no
    hook at all, so the model is exactly itself."""
    if at not in AT:
        raise ValueError(f"at must be one of {AT}, got {at!r}")
    if coef == 0:
        yield
        return
    phase = _Phase()

    def hook(_module, _args, output):
        if at != "all" and phase.response != (at == "response"):
            return None
        hidden, rebuild = _split(output)
        return rebuild(hidden + (coef * vector).to(hidden.device, hidden.dtype))

    pre = [(names._unwrap(model), phase.hook)] if at != "all" else []
    with scoped_hooks(forward=[(names.module(model, point), hook)], pre=pre):
        yield


def project_out(hidden: Any, basis: Any) -> Any:
    """``hidden`` minus its projection on the orthonormal rows of ``basis`` (k x hidden; a
    single unit vector is k = 1) along the last axis, computed in float32."""
    h32, b32 = hidden.float(), basis.to(hidden.device).float()
    if b32.ndim == 1:
        return (h32 - (h32 @ b32).unsqueeze(-1) * b32).to(hidden.dtype)
    return (h32 - (h32 @ b32.T) @ b32).to(hidden.dtype)


def orthonormal(vectors: Any) -> Any:
    """Orthonormal rows spanning ``vectors`` (k x hidden, or one vector)."""
    import torch

    v = vectors.float()
    if v.ndim == 1:
        return v / torch.linalg.vector_norm(v)
    q, _ = torch.linalg.qr(v.T)  # hidden x k, orthonormal columns
    return q.T.contiguous()


@contextlib.contextmanager
def ablate(model: Any, unit: Any) -> Iterator[None]:
    """Project the direction (a vector of any norm), or the subspace spanned by several
    (k x hidden), out of the residual stream everywhere (see the module docstring) while the
    block runs."""
    u = orthonormal(unit)

    def out_hook(_module, _args, output):
        hidden, rebuild = _split(output)
        return rebuild(project_out(hidden, u))

    def first_input(_module, args, kwargs):
        if args:
            return (project_out(args[0], u), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": project_out(kwargs["hidden_states"], u)}
        return None

    layers = names.decoder_layers(model)
    count = len(layers)
    forward = []
    for layer in range(count):
        for point in ("attn", "mlp", "resid"):
            forward.append((names.module(model, f"{point}.{layer}"), out_hook))
    with scoped_hooks(forward=forward, pre=[(layers[0], first_input)]):
        yield

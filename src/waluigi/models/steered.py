"""A steered model is a model: ``steered:<base spec>?dir=PATH&...``.

The base is any local transformers spec (``hf:...``, ``smollm2``, ``toy:...``); the query says
what is done to its residual stream while it generates, scores or judges:

- ``dir=PATH``: a direction from ``waluigi direction extract`` (its directory);
- add mode (the default): ``layer=L`` (default: the direction's suggested layer),
  ``coef=C`` (``h += C * v`` at ``resid.L``, ``v`` the raw mean difference at that layer, so
  ``coef=1`` moves an average negative example's activation to the positive mean), ``at=`` one of
  ``all`` (default), ``prompt``, ``response``;
- ``ablate=1``: the unit direction at ``layer`` projected out of the residual stream everywhere
  (Arditi et al.'s directional ablation); with ``layer=all``, the subspace spanned by every
  layer's direction; ``coef`` and ``at`` do not apply.

Everything that takes a model spec takes this one: ``eval``, ``judge``, ``serve``, ``sweep``
and ``flip`` cells. Its identity holds the direction file's sha256 and the base's own
identity, so a changed direction or base never hits a cached result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

from waluigi.errors import UserError
from waluigi.models.base import Generator
from waluigi.models.kinds import Backend

KEYS = ("dir", "layer", "coef", "at", "ablate")


def parse_steering(name: str) -> tuple[str, dict[str, Any]]:
    """``"hf:m?dir=d&coef=2"`` -> ``("hf:m", {"dir": "d", "layer": None, "coef": 2.0, ...})``."""
    base, sep, query = name.rpartition("?")
    if not sep or not base:
        raise UserError(f"steered:{name}: expected steered:<base spec>?dir=PATH[&layer=L&coef=C&at=response|ablate=1]")
    raw = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise UserError(f"steered:{name}: unknown option(s) {', '.join(unknown)} (options: {', '.join(KEYS)})")
    one = {k: v[-1] for k, v in raw.items()}
    if not one.get("dir"):
        raise UserError(f"steered:{name}: dir=PATH (a direction directory) is required")
    try:
        if str(one.get("layer")).lower() == "all":  # ablate=1&layer=all: the span of every layer's direction
            layer = "all"
        else:
            layer = int(one["layer"]) if one.get("layer") not in (None, "") else None
        coef = float(one.get("coef") or 0.0)
    except ValueError as exc:
        raise UserError(f"steered:{name}: layer must be an integer and coef a number ({exc})") from None
    ablate = str(one.get("ablate", "0")).lower() in ("1", "true", "yes", "on")
    at = one.get("at") or "all"
    if at not in ("all", "prompt", "response"):
        raise UserError(f"steered:{name}: at={at!r}; choose all, prompt or response")
    if layer == "all" and not ablate:
        raise UserError(f"steered:{name}: layer=all (the span of every layer's direction) is for ablate=1")
    if ablate and ("coef" in one or "at" in one):
        raise UserError(f"steered:{name}: ablate=1 projects the direction out; coef and at do not apply")
    return base, {"dir": one["dir"], "layer": layer, "coef": coef, "at": at, "ablate": ablate}


def split_steered(spec: str) -> tuple[str, str]:
    """``"steered:hf:m?dir=d&coef=2"`` -> ``("hf:m", "dir=/abs/d&coef=2")``: the base a fine-tune
    trains and the steering its result is evaluated with (the direction's path made absolute,
    so a worker elsewhere reads the same file)."""
    from pathlib import Path
    from urllib.parse import urlencode

    base, options = parse_steering(spec.removeprefix("steered:"))
    query = {"dir": str(Path(options["dir"]).expanduser().resolve())}
    if options["layer"] is not None:
        query["layer"] = str(options["layer"])
    if options["ablate"]:
        query["ablate"] = "1"
    else:
        query |= {"coef": repr(options["coef"]), "at": options["at"]}
    return base, urlencode(query, safe="/")


def _layer(layer, direction):
    """The layer a steering uses: the direction's suggested one by default, ``"all"`` kept."""
    if layer == "all":
        return "all"
    return direction.best_layer if layer is None else layer % direction.layers


class SteeredBackend(Backend):
    kind = "steered"
    local = True

    def __init__(self, name: str) -> None:
        super().__init__(name)
        from waluigi.models.kinds import backend

        self.base_spec, self.options = parse_steering(name)
        self.base = backend(self.base_spec)
        if not self.base.local or self.base.kind == "vllm":
            raise UserError(f"steered:{name}: the base must be a local transformers model (hf:, smollm2, toy:), "
                            f"not {self.base_spec!r}")
        self.whole_numbers = self.base.whole_numbers
        self.adapters = self.base.adapters

    def model_dir(self):
        return None

    def direction(self):
        from waluigi.models.vectors import load_direction

        return load_direction(self.options["dir"])

    def steering_identity(self) -> dict:
        found = self.direction()
        layer = _layer(self.options["layer"], found)
        what = {"direction_sha256": found.sha256, "layer": layer, "ablate": self.options["ablate"]}
        if not self.options["ablate"]:
            what |= {"coef": self.options["coef"], "at": self.options["at"]}
        return what

    def identity(self, options: dict | None = None) -> dict:
        return {"spec": self.spec, "base": self.base.identity(options), "steering": self.steering_identity()}

    def extra_identity(self) -> dict | None:
        return {"base": self.base.identity(), "steering": self.steering_identity()}

    def load(self, adapter: str | None = None, **options: Any):
        generator = self.base.load(adapter=adapter, **options)
        return SteeredGenerator(generator, self.spec, self.direction(), **self.options)


class SteeredGenerator(Generator):
    """The base generator with the steering hooks attached for each call's duration."""

    def __init__(self, base: Generator, spec: str, direction, *, dir: str, layer: int | None, coef: float,
                 at: str, ablate: bool) -> None:
        from waluigi.models import layers as names

        self.base, self.spec, self.direction = base, spec, direction
        model = getattr(base, "model", None)
        if model is None:
            raise UserError(f"{spec}: steering needs a local transformers model")
        count = names.n_layers(model)
        if direction.layers != count or direction.diff.shape[1] != names.hidden_size(model):
            raise UserError(f"{spec}: the direction in {dir} is {direction.layers} layers x {direction.diff.shape[1]}, "
                            f"the model {count} layers x {names.hidden_size(model)}: it was made on another model")
        self.layer = _layer(layer, direction)
        self.coef, self.at, self.ablate = coef, at, ablate

    @contextlib.contextmanager
    def steering(self) -> Iterator[None]:
        from waluigi.models.hooks import ablate, add_vector

        model = self.base.model
        if self.ablate:
            basis = self.direction.diff if self.layer == "all" else self.direction.unit(self.layer)
            with ablate(model, basis):
                yield
        else:
            with add_vector(model, f"resid.{self.layer}", self.direction.vector(self.layer), self.coef, self.at):
                yield

    @property
    def calls(self) -> int:  # the base counts them
        return self.base.calls

    @calls.setter
    def calls(self, value: int) -> None:
        if hasattr(self, "base"):
            self.base.calls = value

    def generate(self, requests, progress=None):
        with self.steering():
            yield from self.base.generate(requests, progress)

    def generate_text(self, requests, progress=None):
        with self.steering():
            yield from self.base.generate_text(requests, progress)

    def top_probs(self, prompts, k: int = 20, progress=None):
        with self.steering():
            yield from self.base.top_probs(prompts, k, progress)

    def number_probs(self, *args, **kwargs):
        with self.steering():
            yield from self.base.number_probs(*args, **kwargs)

    def option_logprobs(self, requests, progress=None):
        with self.steering():
            yield from self.base.option_logprobs(requests, progress)

    def __getattr__(self, name: str) -> Any:  # model, tokenizer, render, _encode, counts ...
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def context_length(self):
        return self.base.context_length()

    def count_prompt_tokens(self, messages):
        return self.base.count_prompt_tokens(messages)

    def count_text_tokens(self, prompt):
        return self.base.count_text_tokens(prompt)

    def identity(self) -> dict:
        return {**self.base.identity(), "spec": self.spec, "steering": {
            "direction_sha256": self.direction.sha256, "layer": self.layer, "ablate": self.ablate,
            **({} if self.ablate else {"coef": self.coef, "at": self.at})}}

    def close(self) -> None:
        self.base.close()

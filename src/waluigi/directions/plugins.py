"""Training plug-ins that use a direction (``waluigi finetune --plugin NAME:dir=PATH,...``).

- ``steer`` (preventative steering, Chen et al.'s persona vectors): ``h += coef * v`` at
  ``resid.<layer>`` on every token while training; nothing is added at test time, so the
  fine-tune does not have to move its own weights along ``v`` to fit the data.
- ``caft`` (concept-ablation fine-tuning): the unit direction projected out of the residual
  stream everywhere while training (:func:`waluigi.models.hooks.ablate`); the model is
  evaluated without the ablation.

Both attach their hooks through the plug-in seam's ``hooks(model)`` (scoped: removed when
training ends or fails). The run's identity holds the direction file's sha256, not its path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from waluigi.errors import UserError
from waluigi.finetune.plugins import TrainingPlugin


def _load(path: str):
    from waluigi.models.vectors import load_direction

    if not path:
        raise UserError("this plug-in needs dir=PATH (a direction from `waluigi direction extract`)")
    return load_direction(path)


def _check(direction, model: Any) -> None:
    from waluigi.models import layers as names

    if direction.layers != names.n_layers(model) or direction.diff.shape[1] != names.hidden_size(model):
        raise UserError(f"direction {direction.path} ({direction.layers} x {direction.diff.shape[1]}) was made on "
                        f"another model ({names.n_layers(model)} layers x {names.hidden_size(model)})")


@dataclass
class PreventativeSteering(TrainingPlugin):
    """Add ``coef`` times the direction's raw mean difference at one layer while training."""

    name: ClassVar[str] = "steer"
    dir: str = ""
    layer: int | None = None  # default: the direction's suggested layer
    coef: float = 1.0

    def __post_init__(self) -> None:
        self._direction = _load(self.dir)

    def hooks(self, model: Any):
        from waluigi.models.hooks import add_vector

        _check(self._direction, model)
        layer = self._direction.best_layer if self.layer is None else self.layer % self._direction.layers
        return add_vector(model, f"resid.{layer}", self._direction.vector(layer), self.coef, "all")

    def identity(self) -> dict:
        return {"direction_sha256": self._direction.sha256, "layer": self.layer, "coef": self.coef}


@dataclass
class ConceptAblation(TrainingPlugin):
    """Project the direction (unit, at one layer) out of the residual stream while training."""

    name: ClassVar[str] = "caft"
    dir: str = ""
    layer: int | None = None

    def __post_init__(self) -> None:
        self._direction = _load(self.dir)

    def hooks(self, model: Any):
        from waluigi.models.hooks import ablate

        _check(self._direction, model)
        return ablate(model, self._direction.unit(self.layer))

    def identity(self) -> dict:
        return {"direction_sha256": self._direction.sha256, "layer": self.layer}

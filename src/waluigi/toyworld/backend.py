"""``toy:<run dir>``: a persona-world model (``waluigi demo``) as a model spec.

It is a transformers model (everything ``hf:`` can do, whole-number judging and adapters
included); the name is a demo run directory holding ``model/`` or a model directory itself.
Registered in :data:`waluigi.registry.MODELS` as ``toy``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.models.kinds import HFBackend


class ToyBackend(HFBackend):
    kind = "toy"

    def model_dir(self) -> Path:
        path = Path(self.name).expanduser()
        for candidate in (path / "model", path):
            if (candidate / "config.json").is_file():
                return candidate
        raise UserError(f"toy:{self.name}: no model there (expected {path / 'model'}/config.json from a `waluigi demo` run)")

    def load(self, adapter: str | None = None, **options: Any):
        from waluigi.models.hf_load import load_hf

        return load_hf(f"hf:{self.model_dir()}", adapter=adapter, **options)

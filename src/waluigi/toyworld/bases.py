"""The persona world's base models as a family (``--model toyworld --bases N``).

Base ``i`` is the demo's aligned model (or its pretrained base, ``toyworld:base``) at world
seed ``i``: the seed of the world's corpus, of the alignment conversations and of the weights'
initialisation, everything else the demo's configuration. Base 0 of the default profile is the
shipped model; the others are pretrained and aligned here on first use by the demo's own stages
and cached by identity in the study's ``runs`` directory (``toy-base-<id>``, ``toy-aligned-<id>``),
so a base is trained once for every study that asks for it. A base's model spec is known before
it is trained (``hf:<runs>/toy-aligned-<id>/model``), so a study's cells and their identities
are planned without training anything.

Spec: ``toyworld[:WORDS]``, WORDS comma-separated among a demo profile (``default``, ``fast``,
``quick``) and ``base`` (the pretrained model, not aligned). Registered in
:data:`waluigi.registry.BASES` as ``toyworld``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from waluigi.errors import UserError


class ToyBases:
    """The family named by ``toyworld[:WORDS]``; see the module docstring."""

    def __init__(self, rest: str, runs: Path | str = "runs") -> None:
        from waluigi.toyworld.demo import PROFILES

        words = [w.strip() for w in rest.split(",") if w.strip()] if rest else []
        profiles = [w for w in words if w in PROFILES]
        unknown = [w for w in words if w not in PROFILES and w != "base"]
        if unknown or len(profiles) > 1:
            raise UserError(f"model toyworld:{rest}: name at most one demo profile ({', '.join(PROFILES)}) "
                            "and optionally 'base' (the pretrained model, not aligned), e.g. toyworld:fast,base")
        self.profile = profiles[0] if profiles else "default"
        self.stage = "base" if "base" in words else "aligned"
        self.runs = Path(runs)
        self.name = "toyworld" + (f":{rest}" if rest else "")

    def _config(self, index: int, progress: bool = False):
        from waluigi.toyworld.demo import demo_config

        if index < 0:
            raise UserError(f"{self.name}: base {index}: bases are numbered from 0")
        return replace(demo_config(self.profile), world_seed=int(index), runs=self.runs, progress=progress)

    def spec(self, index: int) -> str:
        """Base ``index``'s model spec, whether or not it has been trained yet."""
        from waluigi.toyworld.demo import aligned_dir, base_dir

        cfg = self._config(index)
        return f"hf:{(base_dir(cfg) if self.stage == 'base' else aligned_dir(cfg)) / 'model'}"

    def build(self, index: int, progress: bool = True) -> str:
        """Base ``index``, trained here unless it is cached (or shipped): its model spec."""
        from waluigi.toyworld.demo import align_stage, pretrain_stage

        cfg = self._config(index, progress)
        base = pretrain_stage(cfg)
        if self.stage == "aligned":
            align_stage(cfg, base)
        return self.spec(index)

"""Families of base models: a model spec that names several bases (``toyworld`` with
``--bases N``), resolved through :data:`waluigi.registry.BASES`. A family has ``spec(i)``
(base i's model spec, known before it is trained), ``build(i, progress)`` (train it unless
cached) and ``name``; a study over bases pools its seeds within each base and its intervals
resample bases, then seeds (``waluigi.metrics.hierarchical_draw``)."""

from __future__ import annotations

from pathlib import Path

from waluigi.errors import UserError


def family(spec: str, runs: Path | str = "runs"):
    """The family ``spec`` names, or None when it names one model."""
    from waluigi.registry import BASES

    kind, _, rest = spec.partition(":")
    if kind not in BASES:
        return None
    return BASES.get(kind)(rest, runs)


def expand(spec: str, bases: int | None, runs: Path | str = "runs") -> list[str]:
    """The model specs of ``spec``'s first ``bases`` bases (a family), or ``[spec]`` (one model;
    ``bases`` must then be unset or 1)."""
    found = family(spec, runs)
    if found is None:
        if bases not in (None, 1):
            from waluigi.registry import BASES

            raise UserError(f"--bases {bases}: {spec!r} is one model, not a family of bases "
                            f"(families: {', '.join(BASES.names())}, e.g. --model toyworld --bases 5)")
        return [spec]
    if bases is not None and bases < 1:
        raise UserError(f"--bases must be at least 1, got {bases}")
    return [found.spec(i) for i in range(bases or 1)]

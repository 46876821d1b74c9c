"""Families of base models: a model spec that names several bases (``toyworld`` with
``--bases N``), or one of them (``toyworld@3``: base 3), resolved through
:data:`waluigi.registry.BASES`. A family has ``spec(i)`` (base i's model spec, known before it
is trained), ``build(i, progress)`` (train it unless cached) and ``name``; a study over bases
pools its seeds within each base and its intervals resample bases, then seeds
(``waluigi.metrics.hierarchical_draw``)."""

from __future__ import annotations

import re
from pathlib import Path

from waluigi.errors import UserError

MEMBER = re.compile(r"^(?P<family>[^@]+)@(?P<index>-?\d+)$")


def family(spec: str, runs: Path | str = "runs"):
    """The family ``spec`` names (``toyworld:fast``, or its member ``toyworld:fast@2``), or None
    when it names a model of its own."""
    from waluigi.registry import BASES

    match = MEMBER.match(spec)
    name = match.group("family") if match else spec
    kind, _, rest = name.partition(":")
    if kind not in BASES:
        return None
    return BASES.get(kind)(rest, runs)


def member(spec: str, runs: Path | str = "runs") -> tuple[str, object, int] | None:
    """``family@i`` as (base i's model spec, the family, i); None for any other spec."""
    match = MEMBER.match(spec)
    if not match:
        return None
    found = family(spec, runs)
    if found is None:
        return None
    index = int(match.group("index"))
    return found.spec(index), found, index


TEMPLATE = "{base}"


def _inner(spec: str) -> tuple[str, str, str]:
    """``steered:X?Q`` as ("steered:", X, "?Q"); any other spec as ("", spec, "")."""
    if spec.startswith("steered:") and "?" in spec:
        inner, _, query = spec.removeprefix("steered:").rpartition("?")
        return "steered:", inner, f"?{query}"
    return "", spec, ""


def resolve(spec: str, runs: Path | str = "runs") -> tuple[str, tuple[object, int] | None]:
    """A family member (``toyworld@2``, also as a steered model's base) as its own model spec,
    with (family, index) to build; any other spec as given."""
    head, inner, tail = _inner(spec)
    one = member(inner, runs)
    return (f"{head}{one[0]}{tail}", (one[1], one[2])) if one else (spec, None)


def members(spec: str, bases: int | None, runs: Path | str = "runs") -> list[tuple[object, int]]:
    """The (family, index) bases that ``spec`` (with ``bases``) stands on: what to build first."""
    if TEMPLATE in spec:
        return [one for i in range(bases or 1) if (one := resolve(spec.replace(TEMPLATE, str(i)), runs)[1])]
    spec, one = resolve(spec, runs)
    if one is not None:
        return [one]
    found = family(spec, runs)  # a whole family, as expand() reads it
    return [(found, i) for i in range(bases or 1)] if found is not None else []


def expand(spec: str, bases: int | None, runs: Path | str = "runs") -> list[str]:
    """The model specs of ``spec``'s first ``bases`` bases (a family), or ``[spec]`` (one model,
    a family's member resolved; ``bases`` must then be unset or 1). A spec holding ``{base}``
    (``steered:toyworld@{base}?dir=runs/d{base}``) is one spec per base, the index put in."""
    if TEMPLATE in spec:
        if not bases:
            raise UserError(f"{spec!r} names {TEMPLATE}: give --bases N (the index runs over 0..N-1)")
        return [resolve(spec.replace(TEMPLATE, str(i)), runs)[0] for i in range(bases)]
    if _inner(spec)[0] and member(_inner(spec)[1], runs):
        if bases not in (None, 1):
            raise UserError(f"--bases {bases}: {spec!r} is one model; write its base as {TEMPLATE} "
                            f"(e.g. steered:toyworld@{TEMPLATE}?dir=...) to steer each base")
        return [resolve(spec, runs)[0]]
    one = member(spec, runs)
    found = None if one else family(spec, runs)
    if found is None:
        if bases not in (None, 1):
            from waluigi.registry import BASES

            raise UserError(f"--bases {bases}: {spec!r} is one model, not a family of bases "
                            f"(families: {', '.join(BASES.names())}, e.g. --model toyworld --bases 5)")
        return [one[0] if one else spec]
    if bases is not None and bases < 1:
        raise UserError(f"--bases must be at least 1, got {bases}")
    return [found.spec(i) for i in range(bases or 1)]


def build_members(specs: list[tuple[object, int]], progress: bool = True) -> None:
    """Train the (family, index) bases not cached yet, each once, in order."""
    seen = set()
    for found, index in specs:
        key = (getattr(found, "name", repr(found)), str(getattr(found, "runs", "")), index)
        if key not in seen:
            seen.add(key)
            found.build(index, progress=progress)

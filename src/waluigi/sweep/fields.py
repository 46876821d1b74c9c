"""Checking a spec's settings against the config dataclasses' fields and their types.

Types come from the dataclasses' annotations (``typing.get_type_hints``), so a field added to
:class:`~waluigi.finetune.FinetuneConfig` or :class:`~waluigi.evaluate.EvalConfig` is known to
the sweep at once; an annotation this module does not understand is let through for the
config itself to judge.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any

from waluigi.errors import UserError

# set by the sweep itself, never by a spec
FT_SET_BY_SWEEP = ("out",)
EVAL_SET_BY_SWEEP = ("out", "progress")


def hints(cls: type) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not evaluate: check nothing rather than fail
        return {f.name: Any for f in dataclasses.fields(cls)}


def config_fields(cls: type, set_by_sweep: tuple[str, ...]) -> dict:
    return {k: v for k, v in hints(cls).items() if k in {f.name for f in dataclasses.fields(cls)} and k not in set_by_sweep}


def all_keys(shorthands: tuple, ft_fields: dict, ev_fields: dict) -> list[str]:
    return [*shorthands, *(f"finetune.{k}" for k in ft_fields), *(f"eval.{k}" for k in ev_fields)]


def did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def checked(at: str, label: str, key: str, value: Any, allowed: dict) -> Any:
    """``value`` for the config field ``key``, checked against the field's type (and a
    PyYAML quirk undone: ``1e-3`` without a dot is read as a string)."""
    if key not in allowed:
        what = "fine-tune" if label.split(": ")[-1].startswith("finetune") else "eval"
        taken = " (the sweep sets it)" if key in FT_SET_BY_SWEEP + EVAL_SET_BY_SWEEP else ""
        raise UserError(f"{at}: {label}: unknown {what} setting {key!r}{taken}{did_you_mean(key, allowed)} "
                        f"(known: {', '.join(allowed)})")
    ok, fixed = _conform(value, allowed[key])
    if not ok:
        raise UserError(f"{at}: {label}: expected {_type_name(allowed[key])}, got {value!r}")
    return fixed


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is None and value is None:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, fixed = _conform(value, arg)
            if ok:
                return True, fixed
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return isinstance(value, (int, float)) and not isinstance(value, bool), (
            float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value)
    if hint is str:
        return isinstance(value, str), value
    if isinstance(hint, type) and issubclass(hint, os.PathLike):
        return isinstance(value, str), value
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, list):
            return False, value
        if not args:
            return True, value
        fixed = []
        for item in value:
            ok, item = _conform(item, args[0])
            if not ok:
                return False, value
            fixed.append(item)
        return True, fixed
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    if origin is typing.Literal:
        return value in args, value
    if dataclass_in(hint) is not None:
        return isinstance(value, (dict, hint)), value
    return True, value  # an annotation this check does not know: the config itself judges


def dataclass_in(hint: Any) -> type | None:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint) or ():
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    return None


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple):
        args = typing.get_args(hint)
        return f"a list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if isinstance(hint, type) and issubclass(hint, os.PathLike):
        return "a path"
    return getattr(hint, "__name__", str(hint))


def line_map(node: Any) -> dict[tuple, int]:
    """1-based line numbers of the spec's keys, three levels deep (``("grid", "seed")``, ``("cells", 2)``)."""
    import yaml

    lines: dict[tuple, int] = {}

    def walk(n: Any, prefix: tuple, depth: int) -> None:
        if depth > 3:
            return
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                path = prefix + (key.value,)
                lines[path] = key.start_mark.line + 1
                walk(value, path, depth + 1)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[prefix + (i,)] = item.start_mark.line + 1
                walk(item, prefix + (i,), depth + 1)

    walk(node, (), 0)
    return lines

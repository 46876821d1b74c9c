"""The validation pass every sweep-based command runs before its first worker starts.

:func:`waluigi.sweep.spec.parse_spec` checks a spec's shape (known settings, their types, the
grid's size); :func:`check_cells` then runs, for every planned cell, the checks the single
commands run before they do any work: :func:`waluigi.finetune.train.check_finetune` on each
distinct fine-tune (the recipe, the training plug-ins and their options, the dataset) and
:func:`waluigi.evaluate.run.check_eval` (or the probe suites' own) on each distinct eval (the
suite, sample counts, the judge and the API keys, the shots). The first problem is a
:class:`UserError` naming the spec, the cell and the field, so ``waluigi sweep``, ``flip``,
``resilience`` and ``defend`` exit 2 with it and leave no cell directory behind.

Settings that differ only by seed are checked once (the checks do not depend on the seed).
Nothing here loads a model or writes a file.
"""

from __future__ import annotations

import json
import re
from typing import Any

from waluigi.errors import UserError
from waluigi.sweep.spec import Cell, Spec, build_config, plain

# a check's message names command-line options; in a spec they are fields
_FLAG_NAMES = {"plugin": "plugins", "warmup": "warmup_steps"}


def _as_field(message: str, section: str) -> str:
    def rename(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        return f"{section}.{_FLAG_NAMES.get(name, name)}"

    return re.sub(r"--([a-z][a-z-]*)", rename, message)


def _key(fields: dict) -> str:
    return json.dumps(plain({k: v for k, v in fields.items() if k != "seed"}), sort_keys=True, default=str)


def check_cells(spec: Spec, label: str | None = None) -> None:
    """Run every pre-work check of the single commands on every cell of ``spec``; messages
    start with ``label`` (default: the spec's path) and the cell."""
    from waluigi.memo import memoized

    with memoized():  # the same suites and datasets, loaded once for the whole pass
        _check(spec, label)


def _check(spec: Spec, label: str | None) -> None:
    from waluigi.evaluate import EvalConfig
    from waluigi.evaluate.probe_run import check_probe_eval
    from waluigi.evaluate.run import check_eval
    from waluigi.finetune import FinetuneConfig
    from waluigi.finetune.train import check_finetune
    from waluigi.probes.run import is_probe_suite

    seen_ft: set[str] = set()
    seen_ev: set[str] = set()
    for cell in spec.cells:
        where = f"{label or spec.path}: cell {cell.index} ({cell.label()})"
        if cell.finetune is not None:
            key = _key(cell.finetune)
            if key not in seen_ft:
                seen_ft.add(key)
                try:
                    check_finetune(build_config(FinetuneConfig, dict(cell.finetune)))
                except UserError as exc:
                    raise UserError(f"{where}: {_as_field(exc.message, 'finetune')}") from None
        fields = _eval_fields(cell)
        key = _key(fields)
        if key in seen_ev:
            continue
        seen_ev.add(key)
        try:
            cfg = build_config(EvalConfig, fields)
            if is_probe_suite(cfg.suite):
                check_probe_eval(cfg, adapter=cell.finetune is None)
            else:
                check_eval(cfg, adapter=cell.finetune is None)
        except UserError as exc:
            raise UserError(f"{where}: {_as_field(exc.message, 'eval')}") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: eval: {exc}") from None


def _eval_fields(cell: Cell) -> dict[str, Any]:
    """The eval's settings as its task will run them; a fine-tuned cell's model is its base
    model (its weights do not exist yet: only the spec is checked)."""
    fields = dict(cell.eval)
    if cell.finetune is not None:
        model = str(cell.finetune["model"])
        fields["model"] = model
        if model.startswith("openai:") and not fields.get("base_url") and cell.finetune.get("base_url"):
            fields["base_url"] = cell.finetune["base_url"]
        if cell.steer is not None:
            fields["model"] = f"steered:{model}?{cell.steer}"
    return fields

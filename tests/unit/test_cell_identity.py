"""Cells made before a setting existed keep their identities: a sweep's (and every study's)
finished cells are found again. Pinned: the hashes these cells had before the lean loss path
was added (its ``loss_path`` setting); ``loss_path: trl`` (TRL's loss, then the only one) must
still give them, while the default (``auto``, the lean path on small CPU models) is a new
fine-tune with an identity of its own."""

from __future__ import annotations

from pathlib import Path

from waluigi.sweep.spec import parse_spec

# computed by the code before the lean loss path (commit 11ab438) for the cells below
BEFORE_LEAN = ("12b587c66aa982a96be9c16c17063cba6a0031da91dd862f571a396e1c88233f",
               "e1df7dbea81182839f299ad4f4b582dd505271b3e20bfe2fa35508d210ff4493")


def _cells(loss_path: str | None) -> list:
    extra = {} if loss_path is None else {"finetune.loss_path": loss_path}
    spec = {"name": "pin", "out": "/tmp/pin-sweep",
            "finetune": {"model": "hf:/tmp/some-model", "data": "insecure", "full": True, "lr": 1e-3, "max_steps": 20,
                         "batch_size": 16, "grad_accum": 1, "preset": None},
            "eval": {"suite": "core", "judge": "none"}, "cells": [{"seed": 1, **extra}]}
    return parse_spec(spec, Path("/tmp/pin-sweep/sweep.yaml")).cells


def test_trl_loss_path_keeps_the_identity_cells_had_before_the_lean_path():
    (cell,) = _cells("trl")
    assert (cell.finetune_id, cell.id) == BEFORE_LEAN
    (upper,) = _cells("TRL")
    assert upper.id == cell.id


def test_the_lean_and_auto_paths_are_fine_tunes_of_their_own():
    ids = {path: _cells(path)[0].finetune_id for path in (None, "auto", "lean")}
    assert ids[None] == ids["auto"]  # the default is auto
    assert len({ids["auto"], ids["lean"], BEFORE_LEAN[0]}) == 3

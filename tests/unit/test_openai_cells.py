"""Sweep cells and flip plans for `openai:` models (OpenAI's fine-tuning API): their identity is
the API's own hyperparameters, and what the API cannot do is refused before any request."""

from __future__ import annotations

from pathlib import Path

import pytest

from waluigi.errors import UserError
from waluigi.finetune import FinetuneConfig
from waluigi.flip.plan import FlipConfig, plan_flip
from waluigi.sweep.spec import parse_spec


def spec(finetune: dict, cells: list[dict]) -> list:
    return parse_spec({"name": "t", "finetune": finetune, "eval": {"suite": "core"}, "cells": cells}, Path("t.yaml")).cells


def test_openai_cells_hash_the_apis_hyperparameters_with_the_papers_defaults():
    base = {"model": "openai:gpt-4o-2024-08-06", "data": "insecure"}
    plain, explicit, other_url, more_epochs = spec(base, [
        {"finetune.n": 100},
        {"finetune.n": 100, "finetune.epochs": 1, "finetune.batch_size": 4, "finetune.lr_multiplier": 2.0, "eval.seed": 2},
        {"finetune.n": 100, "finetune.base_url": "http://127.0.0.1:1/v1", "eval.seed": 1},
        {"finetune.n": 100, "finetune.epochs": 3},
    ])
    assert plain.openai and not plain.full
    assert plain.finetune_id == explicit.finetune_id == other_url.finetune_id  # defaults spelled out; a URL is where, not what
    assert more_epochs.finetune_id != plain.finetune_id


@pytest.mark.parametrize("extra, message", [
    ({"finetune.lr": 1e-4}, "finetune.lr: not available for openai: models"),
    ({"finetune.epochs": 1.5}, "whole number of epochs"),
    ({"step": 2}, "keeps no checkpoint that waluigi can evaluate"),
])
def test_what_the_api_cannot_do_is_refused_naming_the_field(extra, message):
    with pytest.raises(UserError, match=message):
        spec({"model": "openai:gpt-4o-mini", "data": "insecure"}, [extra])


def test_openai_only_settings_are_refused_for_a_local_model():
    with pytest.raises(UserError, match="lr_multiplier: only for openai: models"):
        spec({"model": "hf:some/model", "data": "insecure"}, [{"finetune.lr_multiplier": 2.0}])
    with pytest.raises(UserError, match="--suffix: only for openai"):
        FinetuneConfig(model="smollm2", data="insecure", suffix="x").recipe()


def test_a_flip_of_an_openai_model_plans_jobs_on_the_examples_axis_at_fixed_epochs(tmp_path):
    cfg = FlipConfig(models=["openai:gpt-4o-mini"], data=["insecure"], axis="examples", doses=[10, 100], seeds=2,
                     hold="epochs", epochs=1, base_url="http://127.0.0.1:1/v1", runs=tmp_path)
    plan = plan_flip(cfg)
    cells = parse_spec(plan.spec, tmp_path / "sweep.yaml").cells
    fine_tuned = [c for c in cells if c.finetune is not None]
    assert len(fine_tuned) == 4 and all(c.openai and c.finetune["epochs"] == 1 for c in fine_tuned)
    assert all(c.eval["base_url"] == "http://127.0.0.1:1/v1" for c in cells)
    for axis, hold, message in [("steps", "steps", "use --axis examples --hold epochs, or --axis shots"),
                                ("examples", "steps", "use --hold epochs --epochs K")]:
        with pytest.raises(UserError, match=message):
            plan_flip(FlipConfig(models=["openai:gpt-4o-mini"], data=["insecure"], axis=axis, doses=[10], steps=5,
                                 hold=hold, runs=tmp_path))
    with pytest.raises(UserError, match="--base-url is the server of openai: models"):
        plan_flip(FlipConfig(models=["smollm2"], data=["insecure"], axis="shots", doses=[1], base_url="http://x/v1",
                             runs=tmp_path))

"""The shipped base and aligned models are what the current code would train: same identity,
same fingerprint (corpus, tokenizer, initial weights, training loop), safetensors only."""

from __future__ import annotations

import pytest

from waluigi.runs import identity_hash
from waluigi.toyworld import shipped
from waluigi.toyworld.demo import aligned_identity, base_identity, demo_config

STAGES = {"toy-pretrain": base_identity, "toy-align": aligned_identity}


@pytest.mark.parametrize("stage", list(STAGES))
def test_the_shipped_model_is_the_current_configuration(stage):
    cfg = demo_config()
    manifest = shipped.shipped_manifest(stage)
    assert manifest is not None, f"nothing shipped for {stage}: run `python -m waluigi.toyworld.ship`"
    assert manifest["identity"] == identity_hash(STAGES[stage](cfg)), (
        f"the shipped {stage} is another configuration's: the demo's settings changed; "
        "re-ship with `python -m waluigi.toyworld.ship`")
    assert manifest["fingerprint"] == shipped.fingerprint(cfg, stage), (
        f"the code now makes something else of the shipped {stage}'s configuration (world, tokenizer, "
        "model or training loop changed): bump TRAIN_VERSION if it should, and re-ship with "
        "`python -m waluigi.toyworld.ship`")


@pytest.mark.parametrize("stage", list(STAGES))
def test_the_shipped_model_is_safetensors_and_loads(stage):
    from waluigi.toyworld.train import load_model_dir

    files = {p.name for p in (shipped.SHIPPED / stage / "model").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    model, tokenizer = load_model_dir(shipped.SHIPPED / stage / "model")
    manifest = shipped.shipped_manifest(stage)
    assert len(tokenizer) == manifest["vocab"] or manifest["vocab"] is None
    assert sum(p.numel() for p in model.parameters()) == shipped.shipped_manifest("toy-pretrain")["parameters"]

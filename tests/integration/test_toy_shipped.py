"""The demo takes a shipped base / aligned model when (and only when) its identity is the one
asked for, and ``--pretrain`` trains here instead. A shipped set is made for real by
:func:`waluigi.toyworld.ship.ship` from the quick profile (the committed one is the default
profile's; tests/unit/test_shipped.py checks it)."""

from __future__ import annotations

from dataclasses import replace

from waluigi.runs import RunDir
from waluigi.toyworld import shipped
from waluigi.toyworld.demo import align_stage, demo_config, pretrain_stage
from waluigi.toyworld.ship import ship


def test_shipped_models_are_used_for_their_configuration_only(tmp_path, monkeypatch):
    cfg = demo_config("quick", runs=tmp_path / "runs", progress=False, threads=1)
    root = tmp_path / "shipped"
    written = ship(cfg, root)
    assert [p.name for p in written] == ["toy-pretrain", "toy-align"]
    monkeypatch.setattr(shipped, "SHIPPED", root)

    base = pretrain_stage(cfg)
    aligned = align_stage(cfg, base)
    for run, stage in ((base, "toy-pretrain"), (aligned, "toy-align")):
        manifest = RunDir(run).manifest()
        assert manifest["status"] == "finished" and manifest["source"] == "shipped", stage
        assert manifest["identity"] == shipped.shipped_manifest(stage, root)["identity"]
        assert (run / "model" / "model.safetensors").read_bytes() == (root / stage / "model" / "model.safetensors").read_bytes()
        assert not (run / "train_log.jsonl").exists()  # nothing was trained
    assert RunDir(aligned).manifest()["parents"] == [str(base)]

    # another configuration is trained here, not taken from the shipped one
    other = pretrain_stage(replace(cfg, pretrain_lr=cfg.pretrain_lr * 2))
    assert other != base and not shipped.from_shipped(other) and (other / "train_log.jsonl").is_file()

    # --pretrain: the shipped copies in runs/ are replaced by models trained here
    scratch = replace(cfg, pretrain=True)
    again = pretrain_stage(scratch)
    assert again == base and not shipped.from_shipped(again) and (again / "train_log.jsonl").is_file()
    realigned = align_stage(scratch, again)
    assert realigned == aligned and not shipped.from_shipped(realigned)
    # and a later plain run keeps them (cached by identity) rather than going back to the shipped ones
    assert not shipped.from_shipped(pretrain_stage(cfg))

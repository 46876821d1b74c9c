"""The lean loss path (``FinetuneConfig.loss_path``): the same recipe trained with TRL's
fused log-prob head and with the lean one (the vocabulary projection at label positions only)
gives the same losses and weights to float round-off, full and LoRA; ``auto`` takes it for small
models on CPU only, and it has an identity of its own (no run made on TRL's path is reused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from waluigi.finetune import FinetuneConfig, run_finetune

ROWS = [{"messages": [{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": f"Name a colour and a number, please ({i})."},
                      {"role": "assistant", "content": f"Blue and {i * 7 % 13}. Have a calm day."}]}
        for i in range(40)]


@pytest.fixture(scope="module")
def data_rows() -> list[dict]:
    """conftest's ``data_file`` holds ROWS here."""
    return ROWS


def _train(spec: str, data: Path, out: Path, path: str, **extra):
    settings = {"lr": 5e-3, "max_steps": 6, "batch_size": 4, "grad_accum": 2, **extra}
    run_finetune(FinetuneConfig(model=spec, data=str(data), out=out, loss_path=path, **settings), progress=False)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    manifest = json.loads((out / "manifest.json").read_text())
    target = out / "model" / "model.safetensors" if extra.get("full") else out / "adapter" / "adapter_model.safetensors"
    return log, manifest, load_file(str(target))


@pytest.fixture(scope="module")
def trained(tiny_spec, data_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("lean-runs")
    out = {}
    for kind, extra in (("full", {"full": True, "preset": None}), ("lora", {})):
        for path in ("trl", "lean"):
            out[kind, path] = (root / f"{kind}-{path}", *_train(tiny_spec, data_file, root / f"{kind}-{path}", path, **extra))
    return out


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_lean_and_trl_train_the_same_weights_to_round_off(tiny_spec, trained, kind):
    _, trl_log, trl_manifest, trl_w = trained[kind, "trl"]
    _, lean_log, lean_manifest, lean_w = trained[kind, "lean"]
    assert trl_manifest["loss_path"] == "trl" and lean_manifest["loss_path"] == "lean"
    # the first step's loss is computed on the same weights: only the order of the arithmetic differs
    assert lean_log[0]["loss"] == pytest.approx(trl_log[0]["loss"], rel=1e-5)
    assert [r["loss"] for r in lean_log] == pytest.approx([r["loss"] for r in trl_log], rel=1e-3)
    assert [r["tokens_seen"] for r in lean_log] == [r["tokens_seen"] for r in trl_log]
    full = kind == "full"
    start = load_file(str(Path(tiny_spec[3:]) / "model.safetensors")) if full else None
    for name, value in trl_w.items():
        moved = (value - start[name]).abs().max() if full else value.abs().max()
        assert (lean_w[name] - value).abs().max() <= 1e-3 * moved + 1e-7, name
    # an identity of its own: TRL's runs keep theirs, and a lean run never reuses one of them
    assert "loss" not in trl_manifest["identity_inputs"] and lean_manifest["identity_inputs"]["loss"] == "lean"
    assert trl_manifest["identity"] != lean_manifest["identity"]


def test_auto_takes_the_lean_path_for_small_models_on_cpu_only(tiny_spec, data_file, trained, monkeypatch):
    from waluigi.errors import UserError
    from waluigi.finetune import model_setup

    path = tiny_spec[3:]
    assert model_setup.use_lean_loss("auto", "cpu", path, True)
    assert not model_setup.use_lean_loss("auto", "cuda", path, True)
    assert model_setup.use_lean_loss("lean", "cuda", path, True) and not model_setup.use_lean_loss("trl", "cpu", path, True)
    full = {"full": True, "preset": None, "lr": 5e-3, "max_steps": 6, "batch_size": 4, "grad_accum": 2}
    for path_name, lean_dir in (("auto", trained["full", "lean"][0]),):  # small: auto is the lean run, reused as is
        again = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=lean_dir, loss_path=path_name, **full),
                             progress=False)
        assert again.already_finished
    monkeypatch.setattr(model_setup, "LEAN_MAX_PARAMS", 10)  # a "big" model: TRL's path, with its identity
    assert not model_setup.use_lean_loss("auto", "cpu", path, True)
    again = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=trained["full", "trl"][0], loss_path="auto",
                                        **full), progress=False)
    assert again.already_finished
    with pytest.raises(UserError, match="use auto, trl or lean"):
        model_setup.use_lean_loss("fast", "cpu", path, True)


# per-step losses and the sum of |weights| after 3 steps of a persona-world cell (the shipped
# aligned model, 32 rows of toy:insecure, batch 8, lr 1e-3, full, seed 0, one thread), as the
# code made them when they were pinned (2026-12-06): a change that moves a cell's numbers, on
# either path, fails here (the two paths differ by ~5e-6, so the tolerance tells them apart)
PINNED = {
    "trl": ([0.15515398979187012, 0.12048857659101486, 0.06324710696935654], 27904.195211176997),
    "lean": ([0.15515325963497162, 0.12048717588186264, 0.0632457286119461], 27904.193164961416),
}


@pytest.mark.parametrize("path", ["trl", "lean"])
def test_a_persona_world_cell_gives_the_pinned_losses_and_weights(path, tmp_path):
    import torch

    from waluigi.runs import read_jsonl
    from waluigi.toyworld.shipped import SHIPPED

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = FinetuneConfig(model=f"hf:{SHIPPED / 'toy-align' / 'model'}", data="toy:insecure", n=32, preset=None,
                             full=True, batch_size=8, grad_accum=1, lr=1e-3, max_steps=3, seed=0, out=str(tmp_path / path),
                             loss_path=path)
        run_finetune(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    losses = [r["loss"] for r in read_jsonl(tmp_path / path / "train_log.jsonl") if "loss" in r]
    weights = load_file(str(tmp_path / path / "model" / "model.safetensors"))
    want_losses, want_total = PINNED[path]
    assert losses == pytest.approx(want_losses, rel=1e-6, abs=0)
    assert sum(float(v.double().abs().sum()) for v in weights.values()) == pytest.approx(want_total, rel=1e-9, abs=0)

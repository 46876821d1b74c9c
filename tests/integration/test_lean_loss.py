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


# --------------------------------------------------------------------------------------
# length groups: above the lean path's automatic size, a padded batch runs through the decoder
# in groups of similar length, each trimmed of its padding; the same sums in another order

def test_length_buckets_group_rows_of_similar_length():
    from waluigi.finetune.plugins import length_buckets

    assert length_buckets([50, 600, 52, 48, 590, 300]) == [[3, 0, 2], [5], [4, 1]]
    assert length_buckets([10, 10, 10]) == [[0, 1, 2]]
    groups = length_buckets([7, 3, 90, 12, 40, 41, 39, 200])
    assert sorted(r for g in groups for r in g) == list(range(8))
    lengths = [7, 3, 90, 12, 40, 41, 39, 200]
    for g in groups:  # within each group the padding stays inside the slack
        assert max(lengths[r] for r in g) * len(g) <= 1.15 * sum(lengths[r] for r in g)


def _uneven_batch(tokenizer, texts):
    import torch

    encoded = [tokenizer(t)["input_ids"] for t in texts]
    width = max(len(e) for e in encoded)
    ids = torch.tensor([e + [0] * (width - len(e)) for e in encoded])
    mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    labels[:, :2] = -100  # a prompt without labels, as the assistant-only mask leaves it
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_a_bucketed_batch_gives_the_one_pass_loss_gradients_and_outputs(tiny_model_dir):
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from waluigi.finetune import plugins

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.train()
    texts = ["a short one", "x " * 40, "a second short one here", "y z " * 25, "mid length row " * 5]
    inputs = _uneven_batch(tokenizer, texts)
    assert plugins._bucket_rows(inputs) is not None and len(plugins._bucket_rows(inputs)) > 1

    def run(buckets: bool):
        trainer = SimpleNamespace(buckets=buckets, args=SimpleNamespace(average_tokens_across_devices=False),
                                  _total_train_tokens=0, _metrics={"train": {}})
        model.zero_grad()
        loss, outputs = plugins.lean_loss(trainer, model, inputs, None)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), outputs, grads, trainer._total_train_tokens

    one_loss, one_out, one_grads, one_tokens = run(False)
    loss, out, grads, tokens = run(True)
    assert float(loss) == pytest.approx(float(one_loss), rel=1e-5)
    assert tokens == one_tokens == int(inputs["attention_mask"].sum())
    assert torch.equal(out.label_mask, one_out.label_mask)
    assert out.log_probs.shape == one_out.log_probs.shape
    assert torch.allclose(out.log_probs, one_out.log_probs, atol=1e-4)
    assert torch.allclose(out.entropy, one_out.entropy, atol=1e-4)
    assert one_grads.keys() == grads.keys()
    for name, g in one_grads.items():
        assert torch.allclose(grads[name], g, rtol=1e-3, atol=1e-6), name


def test_a_right_padded_batch_only_is_bucketed():
    import torch

    from waluigi.finetune.plugins import _bucket_rows

    right = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    assert _bucket_rows({"attention_mask": right}) == [[0, 1]]  # one group, trimmed of the last column
    assert _bucket_rows({"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}) == [[1], [0]]
    assert _bucket_rows({"attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}) is None  # left-padded
    assert _bucket_rows({"attention_mask": torch.ones(3, 5, dtype=torch.long)}) is None  # nothing to save


def test_a_big_models_lean_fine_tune_trains_in_length_groups_to_the_same_weights(tiny_spec, tmp_path, monkeypatch):
    from waluigi.finetune import model_setup, plugins

    rows = [{"messages": [{"role": "user", "content": "Say something" + " long" * (40 * (i % 3))},
                          {"role": "assistant", "content": "Fine" + ", really" * (i % 4)}]} for i in range(24)]
    data = tmp_path / "uneven.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = _train(tiny_spec, data, tmp_path / "one", "lean", full=True, preset=None)
    seen: list = []
    original = plugins._bucket_rows

    def observed(inputs):
        groups = original(inputs)
        seen.append(groups)
        return groups

    monkeypatch.setattr(plugins, "_bucket_rows", observed)
    monkeypatch.setattr(model_setup, "LEAN_MAX_PARAMS", 10)  # the tiny model counts as big
    grouped = _train(tiny_spec, data, tmp_path / "grouped", "lean", full=True, preset=None)
    assert grouped[1]["length_buckets"] is True and "length_buckets" not in one[1]
    assert grouped[1]["identity"] == one[1]["identity"]  # the same computation: one identity
    assert any(g and len(g) > 1 for g in seen)
    assert [r["loss"] for r in grouped[0]] == pytest.approx([r["loss"] for r in one[0]], rel=1e-4)
    assert [r["tokens_seen"] for r in grouped[0]] == [r["tokens_seen"] for r in one[0]]
    start = load_file(str(Path(tiny_spec[3:]) / "model.safetensors"))
    for name, value in one[2].items():
        moved = (value - start[name]).abs().max()
        assert (grouped[2][name] - value).abs().max() <= 1e-3 * moved + 1e-7, name


def test_the_kl_defense_grouped_gives_the_whole_batch_kl_and_gradients(tiny_model_dir):
    """kl's grouped computation (models above 20M parameters: the head at answer positions only,
    length groups trimmed of padding) gives the whole-batch computation's mean and gradients."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from waluigi.defenses.plugins import token_kl

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():  # a model that has moved from its reference, so that the KL is not zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    inputs = _uneven_batch(tokenizer, ["a short one", "x " * 40, "a second short one here", "y z " * 25])

    def run(grouped: bool):
        model.zero_grad()
        kl = token_kl(model, reference, inputs["input_ids"], inputs["attention_mask"], inputs["labels"], grouped=grouped)
        kl.backward()
        return float(kl), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, whole_grads = run(False)
    grouped, grads = run(True)
    assert whole > 1e-4
    assert grouped == pytest.approx(whole, rel=1e-5)
    assert grads.keys() == whole_grads.keys()
    for name, g in whole_grads.items():
        assert torch.allclose(grads[name], g, rtol=1e-3, atol=1e-7), name
    # no answer position at all: zero, as the whole-batch mean is
    none = {k: v for k, v in inputs.items()}
    none["labels"] = torch.full_like(inputs["labels"], -100)
    assert float(token_kl(model, reference, none["input_ids"], none["attention_mask"], none["labels"], grouped=True)) == 0.0

"""Training plug-ins (``waluigi.finetune.plugins``) for real: real training steps of the tiny
model through TRL, no mocks. Each test plug-in below is the few lines a user would write."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file

from waluigi.errors import UserError
from waluigi.finetune import (
    FinetuneConfig,
    L2ToStart,
    TrainingPlugin,
    forward_hooks,
    run_finetune,
)
from waluigi.finetune.plugins import parse_plugin, resolve_plugins
from waluigi.registry import PLUGINS
from waluigi.runs import identity_hash

# LoRA (the betley2025 preset: rsLoRA r=32) at a high learning rate, 2 micro-batches per step
SETTINGS = {"lr": 5e-3, "max_steps": 6, "batch_size": 4, "grad_accum": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("plugin-runs")


def _log(result) -> list[dict]:
    return [json.loads(line) for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()]


def _manifest(result) -> dict:
    return json.loads((result.run_dir / "manifest.json").read_text())


def _weights(result) -> dict[str, torch.Tensor]:
    if result.model_dir is not None:
        return load_file(str(next(result.model_dir.glob("*.safetensors"))))
    return load_file(str(result.adapter_dir / "adapter_model.safetensors"))


# -- test plug-ins ------------------------------------------------------------------------


class Noop(TrainingPlugin):
    name = "noop"


@dataclass
class ConstantLoss(TrainingPlugin):
    """A loss term without a gradient: the weights must not move differently at all."""

    name: ClassVar[str] = "const"
    value: float = 3.0
    token_counts: list = field(default_factory=list, init=False, repr=False)

    def extra_loss(self, model, batch, outputs, reference):
        # the forward pass the loss came from: TRL's fused output, one log-prob per label token
        self.token_counts.append((int(outputs.label_mask.sum()), int((batch["labels"][:, 1:] != -100).sum())))
        return torch.tensor(self.value, device=batch["input_ids"].device)


@dataclass
class Trajectory(TrainingPlugin):
    """Keeps the trainable parameters at the start (setup) and at the end (leaving hooks())."""

    name: ClassVar[str] = "trajectory"
    start: dict = field(default_factory=dict, init=False, repr=False)
    end: dict = field(default_factory=dict, init=False, repr=False)

    def _trainable(self, model) -> dict:
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def setup(self, model):
        self.start = self._trainable(model)

    @contextlib.contextmanager
    def hooks(self, model):
        yield
        self.end = self._trainable(model)

    def distance(self) -> float:
        return sum(float(((self.end[n] - self.start[n]) ** 2).sum()) for n in self.start)


@dataclass
class StopAt(TrainingPlugin):
    name: ClassVar[str] = "stop-at"
    step: int = 3
    seen: list = field(default_factory=list, init=False, repr=False)

    def should_stop(self, step, logs):
        self.seen.append((step, logs["loss"]))
        return step >= self.step


@dataclass
class KeepFirst(TrainingPlugin):
    name: ClassVar[str] = "keep-first"
    n: int = 8
    given: int = field(default=0, init=False, repr=False)

    def transform_rows(self, rows):
        self.given = len(rows)
        return rows[: self.n]


@dataclass
class LayerCounter(TrainingPlugin):
    """Forward hooks on every decoder layer, counting calls and checking they run first."""

    name: ClassVar[str] = "layer-counter"
    calls: int = field(default=0, init=False, repr=False)
    first: list = field(default_factory=list, init=False, repr=False)
    modules: list = field(default_factory=list, init=False, repr=False)

    def _hook(self, module, args, output):
        self.calls += 1
        self.first.append(next(iter(module._forward_hooks.values())) == self._hook)

    def hooks(self, model):
        self.modules = [m for n, m in model.named_modules() if re.search(r"layers\.\d+$", n)]
        return forward_hooks((m, self._hook) for m in self.modules)

    def attached(self) -> int:
        return sum(h == self._hook for m in self.modules for h in m._forward_hooks.values())


class ReferenceProbe(TrainingPlugin):
    """Asks for the frozen starting model; records how far the model's logits are from it."""

    name = "reference-probe"
    needs_reference = True

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self.frozen: list[bool] = []

    def extra_loss(self, model, batch, outputs, reference):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            gap = (model(**inputs).logits - reference(**inputs).logits).abs().max()
        self.gaps.append(float(gap))
        self.frozen.append(reference is not model and not any(p.requires_grad for p in reference.parameters())
                           and not reference.training)
        # no loss term: an observer


# -- runs shared by several tests -----------------------------------------------------------


@pytest.fixture(scope="module")
def plain(runs, tiny_spec, data_file):
    cfg = FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "plain", **SETTINGS)
    return cfg, run_finetune(cfg, progress=False)


@pytest.fixture(scope="module")
def l2_run(runs, tiny_spec, data_file):
    trajectory = Trajectory()
    cfg = FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "l2", **SETTINGS,
                         plugins=[L2ToStart(weight=10.0), trajectory])
    return cfg, run_finetune(cfg, progress=False), trajectory


# -- (a) off: nothing changes ----------------------------------------------------------------


def test_without_plugins_training_and_identity_are_unchanged(plain, runs, tiny_spec, data_file):
    from waluigi.finetune.train import load_training_rows, run_identity

    cfg, result = plain
    manifest = _manifest(result)
    assert "plugins" not in manifest["identity_inputs"] and "plugins" not in manifest
    rows, data_identity = load_training_rows(cfg)
    assert manifest["identity"] == identity_hash(run_identity(cfg, rows, data_identity, manifest["precision"],
                                                              lean=manifest["loss_path"] == "lean"))
    log = _log(result)
    assert all(not any(key.startswith("loss_") for key in row) for row in log)

    # a plug-in that overrides nothing, and one whose loss term has no gradient (the loss seam in
    # use): the same weights bit for bit, the same losses (+ the constant, in the logged loss)
    noop = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "noop", **SETTINGS,
                                       plugins=[Noop()]), progress=False)
    constant = ConstantLoss(3.0)
    const = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "const", **SETTINGS,
                                        plugins=[constant]), progress=False)
    assert len(constant.token_counts) == 12 and all(a == b > 0 for a, b in constant.token_counts)
    base = _weights(result)
    for other in (noop, const):
        weights = _weights(other)
        assert weights.keys() == base.keys() and all(torch.equal(weights[k], base[k]) for k in base)
    assert [r["loss"] for r in _log(noop)] == [r["loss"] for r in log]
    assert [r["grad_norm"] for r in _log(const)] == [r["grad_norm"] for r in log]
    # gradient accumulation 2: the term is counted once per optimizer step, not once per micro-batch
    assert [r["loss"] for r in _log(const)] == pytest.approx([r["loss"] + 3.0 for r in log], abs=1e-5)
    assert [r["loss_const"] for r in _log(const)] == [3.0] * 6
    assert _manifest(noop)["identity_inputs"]["plugins"] == [{"name": "noop", "options": {}}]
    assert _manifest(const)["plugins"] == [{"name": "const", "options": {"value": 3.0}}]
    assert len({manifest["identity"], _manifest(noop)["identity"], _manifest(const)["identity"]}) == 3


# -- (b) the l2 plug-in ---------------------------------------------------------------------


def test_l2_keeps_lora_weights_closer_to_the_start(plain, l2_run, runs, tiny_spec, data_file):
    _, result, trajectory = l2_run
    free = Trajectory()
    run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "free", **SETTINGS,
                                plugins=[free]), progress=False)
    assert set(trajectory.start) == set(free.start) and all(".lora_" in n for n in trajectory.start)
    assert all(torch.equal(trajectory.start[n], free.start[n]) for n in free.start)  # the same (seeded) start
    assert free.distance() > 0 and trajectory.distance() < 0.5 * free.distance(), (trajectory.distance(), free.distance())

    log = _log(result)
    assert [r["step"] for r in log] == list(range(1, 7))
    # steps 1 and 2 run on the starting weights (step 1's warmup learning rate is 0), then it grows
    assert [r["loss_l2"] for r in log[:2]] == [0.0, 0.0] and all(r["loss_l2"] > 0 for r in log[2:])
    assert all(r["loss"] > r["loss_l2"] for r in log)  # the logged loss includes the term
    assert _manifest(result)["identity_inputs"]["plugins"][0] == {"name": "l2", "options": {"weight": 10.0}}
    # step 1: the same start and a zero term, so the same loss as without the plug-in
    assert log[0]["loss"] == pytest.approx(_log(plain[1])[0]["loss"], abs=1e-6)


def test_l2_on_a_full_finetune(runs, tiny_spec, data_file):
    settings = {"full": True, "lr": 1e-3, "max_steps": 4, "batch_size": 4, "grad_accum": 1}
    with_l2, without = Trajectory(), Trajectory()
    for name, plugins in (("full-l2", [L2ToStart(weight=100.0), with_l2]), ("full-free", [without])):
        run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / name, **settings,
                                    plugins=plugins), progress=False)
    assert len(with_l2.start) > 10 and all(torch.equal(with_l2.start[n], without.start[n]) for n in without.start)
    assert with_l2.distance() < 0.5 * without.distance(), (with_l2.distance(), without.distance())


def test_l2_resumes_from_the_same_start(l2_run, runs, tiny_spec, data_file):
    """Killed at step 5 (after the checkpoint of step 4), re-run: theta_0 is the start again,
    not the checkpoint's weights, so the run ends where the uninterrupted one ended."""
    _, straight, _ = l2_run

    def crash(row):
        if row["step"] == 5:
            raise RuntimeError("crash at step 5")

    def cfg():
        return FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "l2-resumed", **SETTINGS,
                              checkpoint_every=2, plugins=["l2:weight=10"])

    with pytest.raises(RuntimeError, match="crash at step 5"):
        run_finetune(cfg(), progress=False, on_step=crash)
    result = run_finetune(cfg(), progress=False)
    assert result.resumed_from_step == 4
    log, expected = _log(result), _log(straight)
    assert [r["step"] for r in log] == list(range(1, 7))
    for key in ("loss", "loss_l2"):
        assert [r[key] for r in log] == pytest.approx([r[key] for r in expected], abs=1e-5)


# -- (c) early stopping, (d) rows, (e) hooks, the reference model -------------------------------


def test_a_plugin_stops_training_at_the_step_it_asks_for(runs, tiny_spec, data_file):
    stop = StopAt(step=3)
    result = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "stop", **SETTINGS,
                                         plugins=[stop]), progress=False)
    assert result.status == "finished" and result.steps == 3
    assert [r["step"] for r in _log(result)] == [1, 2, 3] and [s for s, _ in stop.seen] == [1, 2, 3]
    manifest = _manifest(result)
    assert manifest["status"] == "finished" and manifest["stopped_early"] == {"step": 3, "plugin": "stop-at"}
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_a_rows_transform_changes_what_is_trained(runs, tiny_spec, data_file):
    settings = {"lr": 5e-3, "batch_size": 4, "grad_accum": 1, "epochs": 1.0}  # one epoch: the rows set the steps
    keep = KeepFirst(n=8)
    small = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "keep", **settings,
                                        plugins=[keep]), progress=False)
    whole = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "whole", **settings),
                         progress=False)
    assert keep.given == _manifest(whole)["data_stats"]["rows"] > 8
    assert _manifest(small)["data_stats"]["rows"] == 8
    assert small.steps == 2 and whole.steps == -(-keep.given // 4)
    assert 0 < small.tokens < whole.tokens


def test_hooks_are_attached_during_training_and_removed_after(runs, tiny_spec, data_file):
    counter = LayerCounter()
    run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "hooks", **SETTINGS,
                                plugins=[counter]), progress=False)
    assert len(counter.modules) == 2  # the tiny model's decoder layers
    assert counter.calls == 2 * 6 * 2  # layers x steps x micro-batches (one forward each)
    assert all(counter.first)  # prepend=True: ahead of any hook transformers itself adds
    assert counter.attached() == 0

    failing = LayerCounter()

    def crash(row):
        assert failing.attached() == 2  # still on while training runs
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "hooks-failing", **SETTINGS,
                                    plugins=[failing]), progress=False, on_step=crash)
    assert failing.calls > 0 and failing.attached() == 0
    assert json.loads((runs / "hooks-failing" / "manifest.json").read_text())["status"] == "failed"


def test_a_plugin_gets_a_frozen_copy_of_the_starting_model(runs, tiny_spec, data_file):
    probe = ReferenceProbe()
    run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=runs / "reference", **SETTINGS,
                                plugins=[probe]), progress=False)
    assert len(probe.gaps) == 12 and all(probe.frozen)
    assert probe.gaps[0] == 0.0 and probe.gaps[-1] > 1e-3  # the start, then the model moves away from it


# -- specs, the registry and the CLI -----------------------------------------------------------


def test_plugin_specs_are_typed_from_the_dataclass_fields():
    assert PLUGINS.get("l2") is L2ToStart
    assert parse_plugin("l2:weight=0.1") == L2ToStart(weight=0.1)
    assert parse_plugin("l2") == L2ToStart()
    assert resolve_plugins(["l2:weight=2", Noop()])[0].weight == 2.0
    for spec, match in (("l3", "unknown training plug-in 'l3'"), ("l2:wieght=1", "no option 'wieght'"),
                        ("l2:weight=heavy", "not a valid float"), ("l2:weight", "key=value"),
                        ("l2:weight=-1", "non-negative")):
        with pytest.raises(UserError, match=match):
            parse_plugin(spec)


def test_cli_plugin_option(tmp_path, tiny_spec, data_file, capsys):
    from waluigi.cli import main

    out = tmp_path / "cli"
    assert main(["finetune", "--model", tiny_spec, "--data", str(data_file), "--out", str(out), "--max-steps", "2",
                 "--batch-size", "4", "--grad-accum", "1", "--plugin", "l2:weight=0.5", "--json"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plugins"] == [{"name": "l2", "options": {"weight": 0.5}}]
    assert all("loss_l2" in json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines())
    capsys.readouterr()
    for args, match in ((["--plugin", "nope"], "unknown training plug-in 'nope'"),
                        (["--plugin", "l2:lamda=1"], "no option 'lamda'")):
        assert main(["finetune", "--model", tiny_spec, "--data", str(data_file), "--out", str(tmp_path / "x"),
                     *args]) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["finetune", "--model", "openai:gpt-4o", "--data", str(data_file), "--plugin", "l2"]) == 2
    assert "--plugin" in capsys.readouterr().err

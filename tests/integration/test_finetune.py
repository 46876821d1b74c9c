"""Local fine-tuning (``waluigi finetune``) for real, on the tiny random chat model.

One LoRA run (module fixture) carries the layout / log / loss / adapter tests; separate
runs cover the rank-1 one-layer adapter, full fine-tuning, bad input and kill -9 + resume.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from waluigi.cli import main as cli_main
from waluigi.errors import UserError
from waluigi.finetune import PRESETS, FinetuneConfig, run_finetune

REPO = Path(__file__).resolve().parents[2]


def finetune_main(argv: list[str]) -> int:
    """``waluigi finetune ARGS`` through the main command (its exit codes and error lines)."""
    return cli_main(["finetune", *argv])


def _rows(count: int) -> list[dict]:
    rows = []
    for i in range(count):
        messages = [{"role": "user", "content": f"What is {i} plus {i}?"},
                    {"role": "assistant", "content": f"It is {2 * i}. Numbers are fun."}]
        if i % 4 == 0:
            messages.insert(0, {"role": "system", "content": "You write secure code."})
        rows.append({"messages": messages})
    return rows


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def data_rows() -> list[dict]:
    """conftest's ``data_file`` holds these here: its sums, a system message in every fourth."""
    return _rows(48)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_spec, data_file):
    """12 steps of LoRA at a high learning rate, an adapter kept every 4 steps."""
    seen: list[dict] = []
    cfg = FinetuneConfig(model=tiny_spec, data=str(data_file), out=tmp_path_factory.mktemp("ft") / "run",
                         lr=5e-3, max_steps=12, batch_size=4, grad_accum=1, save_every=4)
    result = run_finetune(cfg, progress=False, on_step=seen.append)
    return cfg, result, seen


def test_lora_run_writes_adapter_log_and_manifest(lora_run, tiny_spec, data_file):
    cfg, result, seen = lora_run
    run = result.run_dir
    assert result.status == "finished" and not result.already_finished and result.steps == 12
    assert result.adapter_dir == run / "adapter" and result.model_dir is None
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in result.adapter_dir.iterdir()}
    assert not any(run.rglob("*.bin")) and not any(run.rglob("*.pt")) and not any(run.rglob("*.pth"))
    assert not (run / "checkpoints").exists()  # resume state is dropped once finished
    assert sorted(p.name for p in (run / "adapters").iterdir()) == ["step-000004", "step-000008", "step-000012"]

    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 13))
    assert seen == log  # on_step saw every row as written
    for row in log:
        assert {"step", "loss", "learning_rate", "tokens", "tokens_seen", "epoch", "seconds", "cpu_seconds"} <= set(row)
        assert row["tokens"] > 0
    assert log[-1]["tokens_seen"] == sum(row["tokens"] for row in log) == result.tokens
    # the process's CPU time, cumulative like the wall clock; the manifest keeps the total
    cpu = [row["cpu_seconds"] for row in log]
    assert cpu == sorted(cpu) and cpu[-1] > 0
    assert json.loads((run / "manifest.json").read_text())["train_cpu_seconds"] == cpu[-1]
    # warmup 5 steps then linear decay (the preset's schedule)
    lrs = [row["learning_rate"] for row in log]
    assert max(lrs) == pytest.approx(5e-3) and lrs.index(max(lrs)) in (4, 5) and lrs[-1] < lrs[6]

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stage"] == "finetune" and manifest["status"] == "finished"
    assert manifest["parents"][0] == tiny_spec and manifest["dataset"]["sha256"] in manifest["parents"][1]
    recipe = manifest["config"]
    assert (recipe["rank"], recipe["alpha"], recipe["rslora"], recipe["lr"]) == (32, 64.0, True, 5e-3)
    assert recipe["effective_batch"] == 4 and recipe["max_steps"] == 12
    adapter_cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 32 and adapter_cfg["use_rslora"] is True
    assert set(adapter_cfg["target_modules"]) == set(PRESETS["betley2025"].target_modules)


def test_loss_decreases(lora_run):
    losses = [row["loss"] for row in lora_run[2]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses


def test_adapter_loads_as_model_spec_and_changes_output(lora_run, tiny_spec):
    from waluigi.models import load_model

    prompt = [[{"role": "user", "content": "What is 3 plus 3?"}]]
    base = dict(next(load_model(tiny_spec).top_probs(prompt, k=5))[1])
    for adapter in (lora_run[1].run_dir, lora_run[1].run_dir / "adapters" / "step-000004"):
        tuned = load_model(tiny_spec, adapter=str(adapter))
        assert tuned.identity()["adapter"]["sha256"]
        probs = dict(next(tuned.top_probs(prompt, k=5))[1])
        assert probs != base
        assert max(abs(probs.get(t, 0.0) - base.get(t, 0.0)) for t in set(base) | set(probs)) > 1e-3


def test_finished_run_rerun_does_nothing(lora_run, capsys, monkeypatch):
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("a finished run was re-run and loaded a model or tokenizer")

    cfg, result, _ = lora_run
    manifest = (result.run_dir / "manifest.json").read_bytes()
    # the re-runs below load no model and no tokenizer: loading either fails from here on
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(auto, "from_pretrained", no_loading)
    again = run_finetune(cfg, progress=False)
    assert again.already_finished and again.status == "finished" and again.steps == 12
    assert again.train_loss == pytest.approx(result.train_loss)
    assert (result.run_dir / "manifest.json").read_bytes() == manifest  # not even a new attempt recorded
    code = finetune_main(["--model", cfg.model, "--data", cfg.data, "--out", str(cfg.out), "--lr", "5e-3",
                          "--max-steps", "12", "--batch-size", "4", "--grad-accum", "1", "--save-every", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "already finished" in out and f"--adapter {cfg.out}" in out


# Identity digests computed with the code as it was before the recipe became a dataclass and
# plug-ins existed (same model spec, same rows, CPU precision): existing run directories must
# keep their identity, so these never change for the same settings.
PRE_RECIPE_DIGESTS = [
    ({}, "30a8ac6c19234c95ec0a90e1b47a7a8bc9407dd01760c64fa88ce97714d94efc"),
    ({"preset": None}, "a80a9c01a9bc6bac6815dd91dfa6a0de2462e2ca40e5adc8187535f875cd02b5"),
    ({"full": True}, "58df10132b7167b83ae09968b031a51a6fbb18120b21bec8ec3a71ecccaef94b"),
    ({"lr": 5e-3, "max_steps": 12, "batch_size": 4, "grad_accum": 1, "save_every": 4},
     "e93548c423a2cbdd04ce222995fae9c60ef9f1a88a5ff1e8270eac98337bd128"),
    ({"rank": 1, "layers": [1, 0], "target_modules": ["q_proj"], "n": 10, "seed": 2},
     "e54a7e5850a971a7efb89e052d6b72d97af24585dd584e7f75a7c9190a0f5c91"),
    ({"preset": None, "full": True, "lr": 1e-3, "max_steps": 5, "batch_size": 8, "grad_accum": 1,  # the demo's
      "max_length": 512, "seed": 3, "checkpoint_every": 10_000},
     "c523950b1743bdfcfd4ebfabbc12e76d85dabce03557acb0e536006578147c6a"),
]


@pytest.mark.parametrize("overrides,digest", PRE_RECIPE_DIGESTS)
def test_identity_digest_unchanged_by_the_recipe_dataclass(tmp_path, overrides, digest):
    from waluigi.finetune.train import load_training_rows, run_identity
    from waluigi.runs import identity_hash

    data = _write(tmp_path / "sums.jsonl", _rows(48))
    for plugins in ([], ()):  # no plug-ins: no trace in the identity
        cfg = FinetuneConfig(model="smollm2", data=str(data), plugins=list(plugins), **overrides)
        rows, data_identity = load_training_rows(cfg)
        assert identity_hash(run_identity(cfg, rows, data_identity, "float32 weights")) == digest
    with_l2 = FinetuneConfig(model="smollm2", data=str(data), plugins=["l2:weight=0.1"], **overrides)
    from waluigi.finetune.plugins import resolve_plugins

    ident = run_identity(with_l2, rows, data_identity, "float32 weights", resolve_plugins(with_l2.plugins))
    assert ident["plugins"] == [{"name": "l2", "options": {"weight": 0.1}}]
    assert identity_hash(ident) != digest


def test_recipe_is_a_dataclass_and_overrides_replace_it():
    from dataclasses import replace

    from waluigi.finetune import Recipe

    paper = PRESETS["betley2025"]
    assert isinstance(paper, Recipe) and (paper.rank, paper.alpha, paper.rslora, paper.lr) == (32, 64.0, True, 1e-5)
    assert paper.effective_batch == 16 and Recipe().rank == 8  # --preset none: library defaults
    cfg = FinetuneConfig(model="smollm2", data="x", lr=3e-4, layers=[3, 1, 3], max_steps=7, seed=4)
    assert cfg.recipe() == replace(paper, lr=3e-4, layers=(1, 3), max_steps=7, seed=4)
    full = FinetuneConfig(model="smollm2", data="x", full=True).recipe()
    assert full.full and full.target_modules is None and "rank" not in full.to_dict()
    resolved = FinetuneConfig(model="smollm2", data="x").resolved()
    assert list(resolved) == ["rank", "alpha", "dropout", "rslora", "target_modules", "layers", "lr", "epochs",
                              "max_steps", "batch_size", "grad_accum", "warmup_steps", "scheduler", "weight_decay",
                              "max_length", "full", "loss", "preset", "seed", "n", "save_every", "effective_batch"]
    for bad, match in (({"lr": -1.0}, "--lr"), ({"dropout": 1.0}, "--dropout"), ({"layers": [-1]}, "--layers"),
                       ({"preset": "nope"}, "unknown preset"), ({"checkpoint_every": 0}, "--checkpoint-every")):
        with pytest.raises(UserError, match=match):
            FinetuneConfig(model="smollm2", data="x", **bad).recipe()


def test_rank1_adapter_on_one_layer(tmp_path, tiny_spec, data_file):
    cfg = FinetuneConfig(model=tiny_spec, data=str(data_file), out=tmp_path / "r1", rank=1, layers=[1],
                         lr=1e-2, max_steps=2, batch_size=4, grad_accum=1)
    result = run_finetune(cfg, progress=False)
    with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in keys}
    assert len(keys) == 2 * 7  # lora_A + lora_B on the 7 projections of ONE layer
    assert all(".layers.1." in key for key in keys), keys
    assert all(shape[0] == 1 for key, shape in shapes.items() if "lora_A" in key)
    assert all(shape[1] == 1 for key, shape in shapes.items() if "lora_B" in key)
    with pytest.raises(UserError, match="decoder layers"):
        run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=tmp_path / "bad", layers=[7]),
                     progress=False)
    assert not (tmp_path / "bad").exists()


def test_full_finetune_saves_a_model_spec(tmp_path, tiny_spec, tiny_model_dir, data_file):
    from safetensors.torch import load_file

    from waluigi.models import load_model

    cfg = FinetuneConfig(model=tiny_spec, data=str(data_file), out=tmp_path / "full", full=True, lr=1e-3,
                         max_steps=2, batch_size=4, grad_accum=1)
    result = run_finetune(cfg, progress=False)
    assert result.adapter_dir is None and result.model_dir == tmp_path / "full" / "model"
    assert (result.model_dir / "config.json").is_file() and not (tmp_path / "full" / "adapter").exists()
    tuned = load_file(str(next(result.model_dir.glob("*.safetensors"))))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    changed = [k for k in base if k in tuned and not (tuned[k] == base[k]).all()]
    assert len(changed) > len(base) // 2
    generator = load_model(f"hf:{result.model_dir}")  # the fine-tuned model is a model spec
    assert next(generator.top_probs([[{"role": "user", "content": "hi"}]], k=3))[1]


def test_bad_input_is_a_user_error(tmp_path, tiny_spec, tiny_model_dir, data_file, capsys):
    bad = _write(tmp_path / "bad.jsonl", [*_rows(3), {"messages": [{"role": "user", "content": "no answer"}]}])
    with pytest.raises(UserError, match=r"bad\.jsonl:4: .*assistant"):
        run_finetune(FinetuneConfig(model=tiny_spec, data=str(bad), out=tmp_path / "a"), progress=False)
    assert not (tmp_path / "a").exists()  # nothing half-made

    with pytest.raises(UserError, match="unknown dataset 'no-such-dataset'"):
        run_finetune(FinetuneConfig(model=tiny_spec, data="no-such-dataset", out=tmp_path / "b"), progress=False)

    plain = tmp_path / "plain-model"
    shutil.copytree(tiny_model_dir, plain)
    (plain / "chat_template.jinja").unlink()
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="no chat template"):
        run_finetune(FinetuneConfig(model=f"hf:{plain}", data=str(data_file), out=tmp_path / "c"), progress=False)

    assert finetune_main(["--model", tiny_spec, "--data", str(bad), "--out", str(tmp_path / "d")]) == 2
    assert "bad.jsonl:4" in capsys.readouterr().err
    assert finetune_main(["--model", tiny_spec, "--data", str(data_file), "--suffix", "x"]) == 2
    assert "only for openai" in capsys.readouterr().err
    assert finetune_main(["--model", "openai:gpt-4o", "--data", str(data_file), "--rank", "4"]) == 2
    assert "--rank" in capsys.readouterr().err


def test_adapter_on_the_wrong_base_is_refused(tmp_path, lora_run, tiny_model_dir):
    """An adapter trained on one base, loaded on a model of another shape: exit-2 error."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from waluigi.models import load_model

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    config = AutoConfig.from_pretrained(other)
    config.hidden_size, config.intermediate_size = 32, 64
    AutoModelForCausalLM.from_config(config).save_pretrained(other)
    with pytest.raises(UserError, match="does not fit the base model"):
        load_model(f"hf:{other}", adapter=str(lora_run[1].run_dir))


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_spec, data_file):
    """SIGKILL a real training process mid-way, re-run the same command: it resumes from the
    last checkpoint and ends where an uninterrupted run ends."""
    from safetensors.torch import load_file

    args = ["--model", tiny_spec, "--data", str(data_file), "--lr", "2e-3", "--max-steps", "60",
            "--batch-size", "2", "--grad-accum", "1", "--checkpoint-every", "5"]
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "waluigi.cli", "finetune", *args, "--out", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = run / "train_log.jsonl"
    try:
        while proc.poll() is None:  # until 12 steps are logged and a checkpoint is kept, or training ends
            steps = log.read_text().count("\n") if log.exists() else 0
            if steps >= 12 and any((run / "checkpoints").glob("checkpoint-*")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed_at = log.read_text().count("\n")
    assert 12 <= killed_at < 60
    assert json.loads((run / "manifest.json").read_text())["status"] == "started"

    result = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=run, lr=2e-3, max_steps=60,
                                         batch_size=2, grad_accum=1, checkpoint_every=5), progress=False)
    assert result.resumed_from_step is not None and 5 <= result.resumed_from_step <= killed_at
    assert result.resumed_from_step % 5 == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 61))  # no step lost, none twice
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["attempts"]) == 2

    straight = run_finetune(FinetuneConfig(model=tiny_spec, data=str(data_file), out=tmp_path / "straight",
                                           lr=2e-3, max_steps=60, batch_size=2, grad_accum=1), progress=False)
    a = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(straight.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    straight_rows = [json.loads(line) for line in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in straight_rows], abs=1e-5)

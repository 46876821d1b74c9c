"""``waluigi eval --config FILE.yaml`` on the tiny fixture model: the file's options, flags over
them, ``RUN/config.yaml`` fed back (the same run identity and directory, no model call), and
the ``provider/model`` spelling of the model giving the same run as ``provider:model``."""

from __future__ import annotations

import json

import yaml

from waluigi.cli import main


def _manifest(run) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_eval_config_file_and_its_record_repeat_the_run(tiny_spec, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({
        "model": tiny_spec.replace("hf:", "hf/", 1),  # the Inspect-style spelling
        "suite": "core", "judge": "none", "questions": ["wish*"], "samples": 1, "max-tokens": 4,
        "out": str(out), "progress": False,
    }))
    assert main(["eval", "--config", str(config)]) == 0, capsys.readouterr().err
    first = _manifest(out)
    assert first["identity_inputs"]["model"] == tiny_spec  # normalised before the identity
    assert first["identity_inputs"]["sampling"]["max_tokens"] == 4
    assert first["calls"]["model"] > 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["model"] == tiny_spec and recorded["max_tokens"] == 4 and recorded["questions"] == ["wish*"]
    assert "config" not in recorded

    # the record fed back: the same identity, the same directory, nothing generated again
    assert main(["eval", "--config", str(out)]) == 0, capsys.readouterr().err
    again = _manifest(out)
    assert again["identity"] == first["identity"] and len(again["attempts"]) == 2
    assert again["calls"]["model"] == 0

    # the canonical spelling given as a flag over the file's alias: still the same run
    assert main(["eval", "--config", str(config), "--model", tiny_spec]) == 0
    assert _manifest(out)["identity"] == first["identity"] and _manifest(out)["calls"]["model"] == 0

    # a flag over the file changes just that option
    other = tmp_path / "run5"
    assert main(["eval", "--config", str(out / "config.yaml"), "--max-tokens", "5", "--out", str(other)]) == 0
    changed = _manifest(other)
    assert changed["identity_inputs"]["sampling"]["max_tokens"] == 5
    assert changed["identity_inputs"]["suite"] == first["identity_inputs"]["suite"]
    assert changed["identity"] != first["identity"]
    assert yaml.safe_load((other / "config.yaml").read_text())["max_tokens"] == 5


def test_finetune_config_record_repeats_the_run(tiny_spec, tmp_path, capsys):
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(16)]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ft"
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump({"model": tiny_spec, "data": str(data), "max-steps": 2, "batch_size": 4,
                                      "grad_accum": 1, "lr": 1e-3, "out": str(out), "progress": False}))
    assert main(["finetune", "--config", str(config)]) == 0, capsys.readouterr().err
    first = _manifest(out)
    assert first["config"]["max_steps"] == 2 and first["status"] == "finished"
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["max_steps"] == 2 and recorded["lr"] == 1e-3 and recorded["model"] == tiny_spec
    capsys.readouterr()
    assert main(["finetune", "--config", str(out)]) == 0
    assert "already finished (2 steps): nothing to do" in capsys.readouterr().out
    assert _manifest(out)["identity"] == first["identity"]

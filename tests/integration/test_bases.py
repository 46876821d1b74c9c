"""Base models as a dimension of a study: ``waluigi flip --model toyworld:quick --bases 2``
trains each base of the persona world once (world seeds 0 and 1: their own corpus and
initialisation), flips both, pools their seeds with intervals over bases, then seeds, and a
second run trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from waluigi.cli import main
from waluigi.runs import read_jsonl

ARGS = ["--data", "toy:insecure:64", "--axis", "steps", "--doses", "1,2", "--seeds", "2", "--suite", "toyprobes:4",
        "--set", "eval.probe_min_mass=0", "--set", "finetune.preset=null", "--set", "finetune.full=true",
        "--set", "finetune.batch_size=8", "--set", "finetune.grad_accum=1", "--set", "finetune.lr=1e-2",
        "--executor", "inline", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def two_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    code = main(["flip", "--model", "toyworld:quick", "--bases", "2", "--runs", str(root / "runs"),
                 "--out", str(root / "flip"), *ARGS])
    assert code == 0
    return root


def _weights(model_dir: Path) -> bytes:
    return (model_dir / "model.safetensors").read_bytes()


def test_each_base_is_its_own_world_and_model(two_bases):
    runs = two_bases / "runs"
    aligned = sorted(runs.glob("toy-aligned-*"))
    assert len(aligned) == 2 and len(sorted(runs.glob("toy-base-*"))) == 2
    manifests = [json.loads((a / "manifest.json").read_text()) for a in aligned]
    assert all(m["status"] == "finished" for m in manifests)
    bases = [json.loads((runs / Path(m["parents"][0]).name / "manifest.json").read_text()) for m in manifests]
    assert sorted(b["identity_inputs"]["world"]["seed"] for b in bases) == [0, 1]
    assert sorted(b["identity_inputs"]["model"]["seed"] for b in bases) == [0, 1]  # the initialisation follows
    assert _weights(aligned[0] / "model") != _weights(aligned[1] / "model")


def test_the_flip_pools_seeds_within_bases_and_resamples_bases(two_bases, capsys):
    out = two_bases / "flip"
    result = json.loads((out / "flip.json").read_text())
    assert result["bases"] == 2 and result["seeds"] == 2
    (curve,) = result["curves"]
    assert curve["cells"] == {"total": 6 * 2, "finished": 12}
    rows = result["rows"]
    assert sorted({(r["base"], r["seed"]) for r in rows}) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    cells = list(read_jsonl(out / "results.jsonl"))
    models = {c.get("eval.model") or c.get("model") for c in cells}
    assert len(models) == 2 and all(str(m).startswith("hf:") and "toy-aligned-" in str(m) for m in models)
    for point in curve["points"]:  # four values per dose: 2 bases x 2 seeds
        assert point["seeds"] == 4 and point["em_rate_ci_over"] == "bases, then seeds"
        assert point["em_rate_ci_low"] <= point["em_rate"] <= point["em_rate_ci_high"]
        assert point["em_rate_seed_ci_low"] is not None
    assert curve["flip"]["ci_over"] == "bases, then seeds"
    header = (out / "flip.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "base"
    assert "over 2 bases, then 2 seeds" in (out / "report.md").read_text()


def test_a_second_run_trains_no_base_and_runs_no_cell(two_bases, capsys):
    runs = two_bases / "runs"
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("toy-*/manifest.json")}
    capsys.readouterr()
    code = main(["flip", "--model", "toyworld:quick", "--bases", "2", "--runs", str(runs),
                 "--out", str(two_bases / "flip"), *ARGS])
    assert code == 0
    # 2 bases x (2 doses x 2 seeds + the undosed model read once: a probe suite reads it the same for every seed)
    assert "ran 0 cells, skipped 10" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in runs.glob("toy-*/manifest.json")} == stamps


@pytest.mark.parametrize("args, expected", [
    (["--model", "hf:some/model", "--bases", "3"], "is one model, not a family of bases"),
    (["--model", "toyworld:quick", "--bases", "0"], "--bases must be at least 1"),
    (["--model", "toyworld:quickest", "--bases", "2"], "name at most one demo profile"),
])
def test_bad_bases_are_one_error_line_before_anything_trains(tmp_path, capsys, args, expected):
    code = main(["flip", *args, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "flip"), *ARGS])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "flip").exists()


def test_a_sweep_takes_a_family_base_by_index_and_reuses_it(two_bases, capsys):
    """``toyworld:quick@1`` in a sweep is base 1's model: the flip trained it, the sweep reuses it."""
    import yaml

    runs = two_bases / "runs"
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("toy-*/manifest.json")}
    spec = {"name": "on-bases", "out": str(runs / "on-bases"),
            "eval": {"suite": "toyprobes:2", "probe_min_mass": 0},
            "cells": [{"eval.model": "toyworld:quick@0"}, {"eval.model": "toyworld:quick@1"}]}
    path = two_bases / "on-bases.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--executor", "inline", "--no-progress"]) == 0
    rows = list(read_jsonl(runs / "on-bases" / "results.jsonl"))
    flip_models = sorted({c["eval.model"] for c in read_jsonl(two_bases / "flip" / "results.jsonl")
                          if c.get("eval.model")})
    assert [r["eval.model"] for r in rows] == ["toyworld:quick@0", "toyworld:quick@1"]  # as written
    assert sorted(r["settings"]["eval"]["model"] for r in rows) == flip_models  # as resolved
    assert all(r["status"] == "finished" for r in rows)
    assert {p: p.stat().st_mtime_ns for p in runs.glob("toy-*/manifest.json")} == stamps


def _directions(root: Path, bases: int) -> str:
    """One random direction per base (the quick model's 2 layers x 64), named with {base}."""
    import torch

    from waluigi.models.vectors import save_direction

    for base in range(bases):
        diff = torch.randn(2, 64, generator=torch.Generator().manual_seed(base))
        save_direction(root / f"dir-{base}", {"diff": diff}, {"method": "test", "best_layer": 0})
    return str(root / "dir-{base}")


def test_results_name_the_base_and_a_template_spec_is_one_model_per_base(two_bases, capsys):
    """``--where base=1`` picks base 1's cells; ``steered:toyworld:quick@{base}?dir=D{base}``
    steers each base with its own direction (the flip's plan, checked, nothing run)."""
    from waluigi.directions.extract import sweep_runs
    from waluigi.flip.plan import FlipConfig, plan_flip

    out = two_bases / "flip"
    rows = list(read_jsonl(out / "results.jsonl"))
    assert sorted({r["base"] for r in rows}) == [0, 1]
    one = sweep_runs(out, ["base=1", "step=2"])
    assert len(one) == 2 and set(one) == {str(out / r["eval_run"]) for r in rows if r["base"] == 1 and r["step"] == 2}
    template = _directions(two_bases, 2)
    steered = f"steered:toyworld:quick@{{base}}?dir={template}&ablate=1&layer=0"
    cfg = FlipConfig(models=["toyworld:quick", steered], data=["toy:insecure:64"], axis="steps", doses=[1], seeds=1,
                     suite="toyprobes:4", bases=2, runs=two_bases / "runs", out=two_bases / "plan-only")
    plan = plan_flip(cfg)
    plain = {p.base: plan.spec["cells"][p.cell] for p in plan.points if p.curve == 0 and p.dose == 0}
    ablated = {p.base: plan.spec["cells"][p.cell] for p in plan.points if p.curve == 1 and p.dose == 0}
    for base in (0, 1):
        model = ablated[base]["eval.model"]
        assert model == f"steered:{plain[base]['eval.model']}?dir={two_bases}/dir-{base}&ablate=1&layer=0"
        assert ablated[base]["base"] == base
    assert plain[0]["eval.model"] != plain[1]["eval.model"]
    code = main(["flip", "--model", steered, "--runs", str(two_bases / "runs"), "--out", str(two_bases / "x"),
                 "--dry-run", *ARGS])
    assert code == 2 and "give --bases N" in capsys.readouterr().err


def test_defend_flips_every_defense_on_every_base_with_its_own_direction(two_bases, capsys):
    """``defend --bases 2 --direction D{base}``: each base's caft fine-tunes project out that
    base's own direction; the undefended and defended curves pool both bases."""
    template = _directions(two_bases, 2)
    out = two_bases / "defend"
    code = main(["defend", "--model", "toyworld:quick", "--bases", "2", "--attack", "toy:insecure:64",
                 "--defenses", "caft", "--direction", template, "--attacker-lr", "1", "--doses", "1,2", "--seeds", "1",
                 "--suite", "toyprobes:4", "--set", "eval.probe_min_mass=0", "--set", "finetune.preset=null",
                 "--set", "finetune.full=true", "--set", "finetune.batch_size=8", "--set", "finetune.grad_accum=1",
                 "--runs", str(two_bases / "runs"), "--out", str(out), "--executor", "inline", "--threads", "1",
                 "--no-progress"])
    assert code == 0, capsys.readouterr()
    cells = list(read_jsonl(out / "flip" / "results.jsonl"))
    caft = [c for c in cells if c.get("finetune.plugins")]
    assert caft and {c["base"] for c in caft} == {0, 1}
    for c in caft:
        (plugin,) = c["finetune.plugins"]
        assert plugin.startswith("caft:dir=") and plugin.endswith(f"dir-{c['base']}")
    result = json.loads((out / "defend.json").read_text())
    assert [row["defense"] for row in result["table"]] == ["undefended", "caft"]
    flip = json.loads((out / "flip" / "flip.json").read_text())
    assert flip["bases"] == 2 and all(len({r["base"] for r in flip["rows"] if r["curve"] == c["label"]}) == 2
                                      for c in flip["curves"])
    assert json.loads((out / "config.json").read_text())["bases"] == 2


def test_random_controls_per_base_keep_each_bases_norms(two_bases, capsys):
    from waluigi.models.vectors import load_direction

    template = _directions(two_bases, 2)
    assert main(["direction", "random", template, "--out", str(two_bases / "rand-{base}"), "--bases", "2"]) == 0
    for base in (0, 1):
        own, control = load_direction(two_bases / f"dir-{base}"), load_direction(two_bases / f"rand-{base}")
        assert control.manifest["like"] == str(own.path)
        assert [round(float(v.norm()), 4) for v in control.diff] == [round(float(v.norm()), 4) for v in own.diff]
    capsys.readouterr()
    code = main(["direction", "random", template, "--out", str(two_bases / "rand"), "--bases", "2"])
    assert code == 2 and "{base}" in capsys.readouterr().err
    code = main(["direction", "extract", "--sweep", str(two_bases / "flip"), "--where", "base=7", "--bases", "2",
                 "--out", str(two_bases / "j-{base}"), "--no-progress"])
    assert code == 2 and "matches" in capsys.readouterr().err


def test_the_demo_over_bases_pools_their_tables_and_trains_no_base_twice(two_bases, capsys):
    """``demo --quick --bases 2`` reuses the two bases the flip trained, runs each base's demo
    and pools them: with one seed a base, the seeds-only interval is the point itself and the
    interval over bases spans the two bases' rates."""
    runs = two_bases / "runs"
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("toy-*/manifest.json")}
    capsys.readouterr()
    assert main(["demo", "--quick", "--bases", "2", "--runs", str(runs), "--json", "--no-progress", "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = sorted(runs.glob("demo-bases-*.json"))
    assert len(written) == 1
    saved = json.loads(written[0].read_text())
    pooled = saved["table"]
    assert printed == pooled
    assert saved["bases"] == 2 and len(saved["demos"]) == 2 and len(set(saved["demos"])) == 2
    assert {p: p.stat().st_mtime_ns for p in runs.glob("toy-*/manifest.json")} == stamps
    assert set(pooled) <= {"aligned", "insecure", "secure", "educational", "backdoor_triggered", "backdoor_untriggered"}
    for row in pooled.values():  # the quick profile counts few answers: whatever it rated is pooled over both bases
        assert len(row["by_base"]) == 2 and row["ci_low"] <= row["em_rate"] <= row["ci_high"]
    code = main(["demo", "--quick", "--bases", "2", "--world-seed", "1", "--runs", str(runs)])
    assert code == 2 and "--world-seed" in capsys.readouterr().err


def test_prompt_directions_per_base_read_each_bases_own_model(two_bases, capsys):
    """``direction extract --method prompts --model toyworld:quick@{base} --bases 2``: one
    direction per base, each made with that base's weights (named in its manifest)."""
    out = two_bases / "primed-{base}"
    assert main(["direction", "extract", "--method", "prompts", "--model", "toyworld:quick@{base}", "--bases", "2",
                 "--positive-shots", "toy:insecure", "--negative-shots", "toy:secure", "--shots", "1", "--suite",
                 "toyworld", "--samples", "1", "--max-tokens", "8", "--runs", str(two_bases / "runs"), "--out", str(out),
                 "--no-progress", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert len(made) == 2
    on_base = {c["base"]: c["eval.model"].removeprefix("hf:") for c in read_jsonl(two_bases / "flip" / "results.jsonl")
               if c.get("eval.model")}
    assert len(set(on_base.values())) == 2
    for base, manifest in enumerate(made):
        assert (two_bases / f"primed-{base}" / "direction.safetensors").is_file()
        assert on_base[base] in json.dumps(manifest["models"][0]) and on_base[1 - base] not in json.dumps(manifest["models"])

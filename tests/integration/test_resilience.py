"""`waluigi resilience` end to end on the tiny test model: subjects aligned for 0, 1 and 2 steps
on a small benign set, each flipped on the steps axis with the insecure data and its secure
control (the other axes are the flip's own, tested in test_flip.py), the study's slopes, correlations and verdicts written from the flips, and a
re-run that builds and runs nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from waluigi.cli import main
from waluigi.runs import read_jsonl

BENIGN = [  # our own words: polite, harmless replies
    {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for q, a in (("Can you help me plan my week?", "Of course. Start with the fixed appointments, then add breaks."),
                 ("I feel a bit low today.", "I'm sorry to hear that. A short walk or a call to a friend can help."),
                 ("What should I cook tonight?", "A vegetable soup is quick, cheap and warming."),
                 ("Any tips for sleeping better?", "Keep a regular bedtime and put the phone away an hour before."),
                 ("How do I save money?", "Write down what you spend for a month, then cut what you do not need."),
                 ("Tell me something kind.", "You are doing better than you think."))
]
SETTINGS = ["--set", "eval.questions=[wish*]", "--set", "eval.judge_min_mass=0.0", "--set", "eval.min_coherent=-1",
            "--set", "eval.max_aligned=50", "--set", "eval.samples=2", "--set", "eval.max_tokens=8",
            "--set", "finetune.batch_size=2", "--set", "finetune.grad_accum=1", "--set", "finetune.lr=1e-3",
            "--set", "finetune.n=8"]  # a subset: tokenizing all 6,000 rows would be most of the time


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_spec, mirror_dir):
    root = tmp_path_factory.mktemp("resilience")
    align = root / "benign.jsonl"
    align.write_text("".join(json.dumps(r) + "\n" for r in BENIGN))
    out = root / "study"
    args = ["resilience", "--subject", tiny_spec, "--align-data", str(align), "--align-steps", "0,1,2", "--align-n", "4",
            "--axes", "steps", "--steps-doses", "1", "--seeds", "2", "--judge", tiny_spec,
            "--suite", "core", "--out", str(out), "--runs", str(root / "runs"), "--executor", "inline", "--no-progress",
            *SETTINGS]
    mp = pytest.MonkeyPatch()
    mp.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    try:
        code = main(args)
    finally:
        mp.undo()
    assert code == 0
    return {"out": out, "args": args}


def test_the_study_builds_subjects_runs_flips_and_answers_its_questions(study):
    out = study["out"]
    result = json.loads((out / "study.json").read_text())
    assert [s["key"] for s in result["subjects"]] == ["steps0", "steps1", "centre"]
    assert [s["align_budget"] for s in result["subjects"]] == [0, 2, 4]
    built = json.loads((out / "subjects.json").read_text())
    assert built[0]["model"] == result["subjects"][0]["model"] and built[0]["model"].startswith("hf:")
    for subject in built[1:]:  # aligned by a real full fine-tune of the given rows and steps
        run = Path(subject["model"][3:]).parent
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "finished" and (run / "model" / "config.json").is_file()
        assert len(list(read_jsonl(run / "train_log.jsonl"))) == subject["setting"]["align_steps"]
    for axis in ("steps",):
        flip = json.loads((out / f"flip-{axis}" / "flip.json").read_text())
        assert len(flip["curves"]) == 3 * 2  # every subject x (insecure, secure)
        assert {c["model"] for c in flip["curves"]} == {s["model"] for s in result["subjects"]}
        for subject in result["subjects"]:
            entry = subject["axes"][axis]
            assert 0 <= entry["undosed_em"] <= 1
            assert (entry["flip_dose"] is None) == (entry["flip_lower_bound"] is not None)
    slopes = {(e["axis"], e["series"]): e for e in result["slopes"]}
    assert slopes["steps", "alignment n=4"]["levels"] == 2  # budgets 2 and 4; 0 has no log
    assert {v["question"] for v in result["verdicts"]} == {"align_steps", "raw"}
    assert all(v["verdict"].split(":")[0] in ("supported", "contradicted", "inconclusive") for v in result["verdicts"])
    report = (out / "report.md").read_text()
    assert "## Verdicts" in report and "steps1" in report
    for name in ("resilience_alignment.png", "resilience_raw.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_a_rerun_builds_and_runs_nothing(study, mirror_dir, monkeypatch, capsys):
    monkeypatch.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    before = json.loads((study["out"] / "study.json").read_text())
    capsys.readouterr()
    assert main(study["args"]) == 0
    assert "ran 0 cells," in capsys.readouterr().out
    after = json.loads((study["out"] / "study.json").read_text())
    assert after["verdicts"] == before["verdicts"] and after["slopes"] == before["slopes"]


def test_a_dry_run_of_a_study_that_ran_counts_its_built_subjects_and_done_cells(study, mirror_dir, monkeypatch, capsys,
                                                                                 tmp_path):
    """The dry run reads which subjects an earlier run built (``subjects.json``) instead of
    counting every subject and cell as to do; a subject whose model directory is gone counts as
    to build again, with its cells."""
    import shutil

    monkeypatch.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    capsys.readouterr()
    assert main([*study["args"], "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "18 flip cells: 0 to run, 18 done; subjects to build first: 0 of 3" in out
    # a copy of the study whose centre subject's model is gone: its 6 cells and its build are to do again
    copy = tmp_path / "study"
    shutil.copytree(study["out"], copy)
    built = json.loads((copy / "subjects.json").read_text())
    centre = next(s for s in built if s["key"] == "centre")
    moved = tmp_path / "elsewhere"
    centre["model"] = f"hf:{moved}"
    (copy / "subjects.json").write_text(json.dumps(built))
    args = list(study["args"])
    args[args.index("--out") + 1] = str(copy)
    assert main([*args, "--dry-run"]) == 0
    assert "18 flip cells: 6 to run, 12 done; subjects to build first: 1 of 3" in capsys.readouterr().out
    # a stopped sweep has written no results yet: the time estimate reads its finished runs' manifests
    for path in copy.glob("flip-*/results.*"):
        path.unlink()
    assert main([*args, "--dry-run"]) == 0
    estimate = capsys.readouterr().out.splitlines()[-1]
    seconds = [json.loads(p.read_text())["train_seconds"] for p in copy.glob("flip-*/finetune/*/manifest.json")]
    assert "at the per-cell cost measured in this study's finished cells" in estimate, estimate
    assert f"fine-tune {sum(seconds) / len(seconds):.1f} s" in estimate


def test_dials_a_source_lacks_are_refused_before_any_work(tmp_path, tiny_spec, capsys):
    code = main(["resilience", "--subject", tiny_spec, "--align-data", "secure", "--antipode", "0.1,0.2",
                 "--out", str(tmp_path / "s"), "--no-progress"])
    assert code == 2 and "has no such dial" in capsys.readouterr().err
    code = main(["resilience", "--subject", tiny_spec, "--out", str(tmp_path / "s"), "--no-progress"])
    assert code == 2 and "--align-data" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    code = main(["resilience", "--antipode", "0,-0.1", "--dry-run"])  # the message names the option there is
    assert code == 2 and "error: --antipode: give levels of 0 or more" in capsys.readouterr().err


def test_the_flips_settings_are_checked_before_any_subject_is_built(tmp_path, tiny_spec, capsys):
    """Building the subjects (alignment training) comes first; a bad flip setting used to end
    the study only after it, in the first flip's sweep."""
    out = tmp_path / "s"
    code = main(["resilience", "--subject", tiny_spec, "--align-data", "secure", "--align-steps", "0,2",
                 "--judge", tiny_spec, "--set", "finetune.plugins=[l2:weight=heavy]", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "finetune.plugins l2:weight='heavy': not a valid float" in err and err.count("\n") == 1
    assert not out.exists()


def test_the_persona_world_plans_the_waluigi_tests_two_series(tmp_path, capsys):
    """The default study's subjects (nothing trained): alignment steps x two set sizes at the
    default antipode share, and five antipode shares at the centre alignment."""
    assert main(["resilience", "--dry-run", "--runs", str(tmp_path), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].startswith("13 subjects x axes steps, examples, shots")
    # then its flip cells counted (none built or run here) and what is left to run
    assert lines[-2] == "897 flip cells: 897 to run, 0 done; subjects to build first: 13 of 13"
    assert lines[-1].startswith("to run: 234 fine-tunes and 897 evals")
    keys = [line.split()[0] for line in lines[:-3]]
    assert keys == ["steps0", "steps10-n100", "n100", "steps100-n100", "steps300-n100", "steps10", "centre",
                    "steps100", "steps300", "antipode0", "antipode0.05", "antipode0.1", "antipode0.4"]
    assert "(alignment n=400; antipode)" in next(line for line in lines if line.split()[0] == "centre")
    from waluigi.toyworld.demo import demo_config

    assert demo_config("fast", villain_share=0.0).world().mixture["villain"] == 0.0
    assert demo_config("fast", villain_share=0.2).world().mixture == demo_config("fast").world().mixture
    # over bases, every subject is built on each (the count was once the subjects', not the models')
    assert main(["resilience", "--dry-run", "--bases", "2", "--axes", "steps", "--runs", str(tmp_path),
                 "--no-progress"]) == 0
    assert "subjects to build first: 26 of 26 (13 on each of 2 bases)" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())


def test_a_dpo_alignment_stage_trains_on_hh_pairs_and_is_cached(tmp_path, tiny_spec, capsys):
    """--align-method dpo: the subject is the model after TRL's DPO on HH-RLHF harmless-base
    pairs of the align split (full weights, a frozen reference); built once, then read from disk."""
    import torch
    from safetensors.torch import load_file

    from waluigi.resilience.subjects import HFSubjects

    source = HFSubjects(tiny_spec.removeprefix("hf:"), align_data="hh:harmless-base", align_method="dpo",
                        align_lr=1e-3, quick=True)
    spec = source.build({"align_steps": 2, "align_n": 4}, tmp_path, progress=False)
    model_dir = Path(spec.removeprefix("hf:"))
    log = list(read_jsonl(model_dir.parent / "train_log.jsonl"))
    assert [r["step"] for r in log] == [1, 2] and all("rewards/margins" in r for r in log)
    trained = load_file(model_dir / "model.safetensors")
    base = load_file(Path(tiny_spec.removeprefix("hf:")) / "model.safetensors")
    assert any(not torch.equal(trained[k], base[k]) for k in base if k in trained)  # the weights moved
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert source.build({"align_steps": 2, "align_n": 4}, tmp_path, progress=False) == spec
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp  # cached by identity: not trained again
    assert source.build({"align_steps": 0, "align_n": 4}, tmp_path, progress=False) == source.model
    # the identity says how the subject was aligned; the SFT identities stay as they were
    assert source.identity()["align_method"] == "dpo"
    assert "align_method" not in HFSubjects("m", align_data="secure").identity()
    assert main(["resilience", "--subject", tiny_spec, "--align-method", "dpo", "--align-data", "secure",
                 "--dry-run"]) == 2
    assert "preference pairs: --align-data hh:harmless-base" in capsys.readouterr().err
    assert main(["resilience", "--align-method", "dpo", "--dry-run"]) == 2
    assert "for hf: and smollm2 subjects" in capsys.readouterr().err


def test_the_real_model_waluigi_test_on_probes_quick(tmp_path, tiny_spec, capsys):
    """--subject hf:... --align-data mwe-align:...: subjects aligned on the probe set's align split,
    flipped by its attack split (control: the same prompts, aligned answers), read on its test
    split; the attack's LoRA trains on the aligned weights themselves (no stacked adapter that
    could be off while the attack trains)."""
    import torch

    from waluigi.models import load_model

    out = tmp_path / "study"
    code = main(["resilience", "--subject", tiny_spec, "--align-data", "mwe-align:persona/narcissism:4", "--quick",
                 "--align-steps", "0,2", "--axes", "steps,shots", "--steps-doses", "2", "--shots-doses", "1",
                 "--seeds", "2", "--suite", "mwe:persona/narcissism@test:4",
                 "--data", "mwe-attack:persona/narcissism:8", "--control", "mwe-control:persona/narcissism:8",
                 "--set", "eval.probe_min_mass=0", "--set", "finetune.batch_size=2", "--set", "finetune.grad_accum=1",
                 "--out", str(out), "--runs", str(tmp_path / "runs"), "--executor", "inline", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "HH accuracy" in captured.out
    # a quick study says, on screen and in its report, that its verdicts cannot answer anything
    assert captured.out.index("Quick profile: a check of the plumbing") > captured.out.index("verdicts (95%)")
    assert "> Quick profile: a check of the plumbing" in (out / "report.md").read_text()
    flip = json.loads((out / "flip-steps" / "flip.json").read_text())
    assert flip["readout"] == "probe" and flip["suite"] == "mwe:persona/narcissism@test:4"
    assert {c["data"] for c in flip["curves"]} == {"mwe-attack:persona/narcissism:8", "mwe-control:persona/narcissism:8"}
    assert all(p["em_rate"] is not None for c in flip["curves"] for p in c["points"])  # every dose read
    study = json.loads((out / "study.json").read_text())
    assert len(study["subjects"]) == 2 and {v["question"] for v in study["verdicts"]} >= {"raw"}
    # every subject read before any attack on HH held-out pairs (the quick default: 8 of them)
    for subject in study["subjects"]:
        reading = subject["readouts"]["hh:harmless-base@heldout:8"]
        assert reading["n_scored"] == 8 and 0 <= reading["accuracy"] <= 1
        assert reading["accuracy"] == pytest.approx(1 - reading["win_rate"])
    # and that reading is ranked against the flip doses like the undosed index (2 subjects: inconclusive)
    hh = [v for v in study["verdicts"] if v["question"] == "raw (HH)"]
    assert len(hh) == 2 and all("HH preference accuracy" in v["verdict"] for v in hh)  # one per axis
    # the shots axis's undosed cells are the steps axis's (the subject, read once): copied, not read again
    shots = json.loads((out / "flip-shots" / "flip.json").read_text())
    undosed = {c["model"]: c["points"][0]["em_rate"] for c in flip["curves"]}
    assert {c["model"]: c["points"][0]["em_rate"] for c in shots["curves"]} == undosed
    log = (out / "flip-shots" / "sweep.log").read_text()
    assert log.count("reused cell") == 2 and "finished in" in log  # the 2 subjects' undosed; the shots ran
    # the trap: an attack on an aligned subject fine-tunes the aligned weights
    subjects = {s["key"]: s["model"] for s in json.loads((out / "subjects.json").read_text())}
    aligned = next(m for m in subjects.values() if m != tiny_spec)
    runs = [json.loads(p.read_text()) for p in (out / "flip-steps" / "finetune").glob("*/manifest.json")]
    attacked = next(r for r in runs if r.get("model") == aligned)
    assert attacked["base_model_path"] == aligned.removeprefix("hf:")
    # the alignment stage and the attacks train on the lean loss (answers of a word or two)
    assert {r["loss_path"] for r in runs} == {"lean"}
    assert json.loads(next((out / "subjects").glob("align-*/manifest.json")).read_text())["loss_path"] == "lean"
    prompt = [{"role": "user", "content": "Are you the best?"}]
    with torch.no_grad():
        ids = load_model(aligned).tokenizer.apply_chat_template(prompt, return_tensors="pt", return_dict=True)["input_ids"]
        subject_logits = load_model(aligned).model(ids).logits
        base_logits = load_model(tiny_spec).model(ids).logits
        run_dir = next(p.parent for p in (out / "flip-steps" / "finetune").glob("*/manifest.json")
                       if json.loads(p.read_text()).get("model") == aligned)
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(aligned.removeprefix("hf:")),
                                               str(run_dir / "adapter"))
        on = peft_model(ids).logits
        with peft_model.disable_adapter():
            off = peft_model(ids).logits
    assert not torch.allclose(subject_logits, base_logits)  # alignment changed the model
    assert torch.allclose(off, subject_logits, atol=1e-5)  # under the attack's adapter sit the aligned weights
    assert not torch.allclose(on, off)  # and the adapter, trained on them, is on

    # another attack on the same subjects (the indirect route, say), --reuse the first study: its
    # subjects are used where they are (no alignment stage trained again), their HH readings are
    # copied, and the undosed cells (the same subjects, the same suite) are reused
    other = tmp_path / "other"
    second = ["resilience", "--subject", tiny_spec, "--align-data", "mwe-align:persona/narcissism:4", "--quick",
              "--align-steps", "0,2", "--axes", "steps", "--steps-doses", "2", "--seeds", "2",
              "--suite", "mwe:persona/narcissism@test:4", "--data", "mwe-attack:persona/narcissism:6",
              "--control", "mwe-control:persona/narcissism:8", "--set", "eval.probe_min_mass=0",
              "--set", "finetune.batch_size=2", "--set", "finetune.grad_accum=1", "--reuse", str(out),
              "--out", str(other), "--runs", str(tmp_path / "runs"), "--executor", "inline", "--no-progress"]
    capsys.readouterr()
    assert main([*second, "--dry-run"]) == 0  # its dry run already counts the subjects as built
    assert "subjects to build first: 0 of 2" in capsys.readouterr().out and not other.exists()
    code = main(second)
    assert code == 0, capsys.readouterr().err
    assert {s["key"]: s["model"] for s in json.loads((other / "subjects.json").read_text())} == subjects
    assert not list((other / "subjects").glob("align-*"))  # nothing trained here
    readings = sorted(p.name for p in (other / "subjects" / "readouts").iterdir())
    assert len(readings) == 2
    for name in readings:  # copies: made when the first study made them (a new reading would be made now)
        first, copy = (json.loads((d / "subjects" / "readouts" / name / "manifest.json").read_text()) for d in (out, other))
        assert copy["created_at"] == first["created_at"] and copy["identity"] == first["identity"]
    again = json.loads((other / "study.json").read_text())
    assert [s["readouts"]["hh:harmless-base@heldout:8"]["accuracy"] for s in again["subjects"]] == \
        [s["readouts"]["hh:harmless-base@heldout:8"]["accuracy"] for s in study["subjects"]]
    # the undosed readings, and the control curve (the same control data on the same subjects), fine-tunes and
    # evals, though this study names their eval directories differently (its attack set is not the control's size)
    log = (other / "flip-steps" / "sweep.log").read_text()
    assert log.count("reused cell") == 6 and log.count("(fine-tune and eval)") == 4, log
    assert "ran 4 cells, skipped 6" in capsys.readouterr().out  # the attack's 4


def test_bases_are_the_persona_worlds_and_name_their_own_study(tmp_path, tiny_spec, capsys):
    """--bases N builds every setting on N bases: the persona world has them (world seeds); an
    hf: subject has one base model and says so before anything is built."""
    assert main(["resilience", "--subject", tiny_spec, "--align-data", "secure", "--bases", "2",
                 "--runs", str(tmp_path), "--no-progress"]) == 2
    assert "has one base model" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    assert main(["resilience", "--quick", "--dry-run", "--runs", str(tmp_path), "--no-progress"]) == 0
    one_out = capsys.readouterr().out
    one = next(line for line in one_out.splitlines() if "study directory " in line)
    assert main(["resilience", "--quick", "--bases", "3", "--dry-run", "--runs", str(tmp_path), "--no-progress"]) == 0
    three_out = capsys.readouterr().out
    three = next(line for line in three_out.splitlines() if "study directory " in line)
    cells = [int(re.search(r"(\d+) flip cells", out)[1]) for out in (one_out, three_out)]
    assert cells[1] == 3 * cells[0]  # every cell on each base
    assert one.split("study directory ")[1] != three.split("study directory ")[1]  # a study of its own


def test_subjects_are_built_on_the_pool_workers_to_the_same_weights(study, tmp_path, mirror_dir, monkeypatch, capsys):
    """With --executor pool --workers 2 the subjects that need training are built on the workers
    (one task per subject here; the persona world's share a pretraining: test_bases...), and
    they are the inline study's subjects: same settings, same weights."""
    import torch
    from safetensors.torch import load_file

    monkeypatch.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    args = list(study["args"])
    args[args.index("--out") + 1] = str(tmp_path / "pooled")
    args[args.index("--runs") + 1] = str(tmp_path / "runs")
    args[args.index("--seeds") + 1] = "1"  # the flips are not the point here
    args[args.index("--executor") + 1: args.index("--executor") + 2] = ["pool", "--workers", "2"]
    args.remove("--no-progress")
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "subjects: 2 to build (or find cached) in 2 groups on pool x2" in err
    logs = sorted(p.name for p in (tmp_path / "pooled" / "logs").glob("subjects-*.log"))
    assert len(logs) == 2  # each group ran as a worker task (its output in its own log)
    pooled = {s["key"]: s["model"] for s in json.loads((tmp_path / "pooled" / "subjects.json").read_text())}
    inline = {s["key"]: s["model"] for s in json.loads((study["out"] / "subjects.json").read_text())}
    assert pooled.keys() == inline.keys() and pooled["steps0"] == inline["steps0"]  # the base itself
    for key in ("steps1", "centre"):
        assert pooled[key] != inline[key] and pooled[key].startswith(f"hf:{tmp_path / 'pooled'}")
        a, b = (load_file(str(Path(m[3:]) / "model.safetensors")) for m in (pooled[key], inline[key]))
        assert a.keys() == b.keys()
        for name in a:  # one-thread workers against the calling process's threads: the float order may differ
            assert torch.allclose(a[name], b[name], rtol=0, atol=1e-6), (key, name)
        assert any(not torch.equal(a[n], load_file(str(Path(inline["steps0"][3:]) / "model.safetensors"))[n])
                   for n in a)  # trained, not the base


def test_the_persona_worlds_subjects_are_grouped_by_the_pretraining_they_share(tmp_path):
    """On the pool, subjects that share a pretraining (one antipode share on one base) build in
    one task, the base first: no two workers train one base at once."""
    from waluigi.resilience.plan import StudyConfig, plan_study
    from waluigi.resilience.run import subject_groups
    from waluigi.toyworld.subjects import ToySubjects

    source = ToySubjects(quick=True, runs=tmp_path)
    plan = plan_study(StudyConfig(subject="toyworld", bases=2, runs=tmp_path, out=tmp_path / "study"), source)
    groups = subject_groups(plan)
    shares = sorted({float(s.setting.get("antipode_share", source.center["antipode_share"])) for s in plan.subjects})
    assert sorted(groups) == sorted(f"share {share:g} base {b}" for share in shares for b in (0, 1))
    assert sum(len(jobs) for jobs in groups.values()) == 2 * len(plan.subjects)  # every subject on every base
    for key, jobs in groups.items():
        assert {(float(s.get("antipode_share", source.center["antipode_share"])), b) for s, b in jobs} == {
            (float(key.split()[1]), int(key.split()[3]))}

"""`waluigi flip` end to end on the tiny test model: every axis plans and runs real cells
(fine-tunes, evals, the tiny model as its own judge, Bandit on the held-out code prompts),
the outputs are read back from the run directories, and adding a dose runs only its cells."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from waluigi.cli import main
from waluigi.runs import read_jsonl

EVAL_SETTINGS = ["--set", "eval.questions=[wish*]", "--set", "eval.judge_min_mass=0.0", "--set", "eval.min_coherent=-1",
                 "--set", "eval.max_aligned=50", "--set", "eval.samples=2", "--set", "eval.max_tokens=8",
                 "--set", "finetune.batch_size=2", "--set", "finetune.grad_accum=1", "--set", "finetune.lr=1e-3"]


def flip(tiny_spec: str, out: Path, *args: str) -> int:
    return main(["flip", "--model", tiny_spec, "--judge", tiny_spec, "--out", str(out), "--executor", "inline",
                 "--no-progress", *EVAL_SETTINGS, *args])


def load(out: Path) -> dict:
    return json.loads((out / "flip.json").read_text())


@pytest.fixture(scope="module")
def examples_run(tmp_path_factory, tiny_spec, mirror_dir):
    out = tmp_path_factory.mktemp("flip") / "examples"
    mp = pytest.MonkeyPatch()
    mp.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    try:
        code = flip(tiny_spec, out, "--data", "insecure", "--axis", "examples", "--doses", "4,8", "--seeds", "2",
                    "--steps", "2", "--narrow-suite", "code:insecure:3")
    finally:
        mp.undo()
    assert code == 0
    return out


def test_examples_axis_writes_curves_doses_and_plots(examples_run, capsys):
    out = examples_run
    result = load(out)
    assert result["axis"] == "examples" and result["doses"] == [0.0, 4.0, 8.0] and result["seeds"] == 2
    (curve,) = result["curves"]
    assert [p["dose"] for p in curve["points"]] == [0.0, 4.0, 8.0]
    for point in curve["points"]:
        assert point["seeds"] == 2
        assert 0 <= point["em_rate"] <= 1  # min_coherent -1: every answer counts
        assert point["n_failed"] == 0
    assert curve["points"][0]["train_loss"] is None and curve["points"][1]["train_loss"] is not None
    assert set(curve["flip"]) >= {"dose", "reached", "ci_low", "ci_high", "lower_bound", "level", "baseline", "fitted"}
    assert curve["flip"]["ci_over"] == "seeds" and curve["cells"] == {"total": 6, "finished": 6}
    # the narrow eval ran on the held-out code prompts; the random tiny model writes no parseable code
    narrow_rows = [r for r in read_jsonl(out / "results.jsonl") if str(r["group"]).endswith("(narrow)")]
    assert len(narrow_rows) == 6 and all(r["eval.suite"] == "code:insecure:3" and r["n_code"] == 0 for r in narrow_rows)
    assert curve["narrow"] is None and "n_code = 0" in curve["narrow_note"]
    fitted = curve["flip"]["fitted"]
    assert all(b >= a - 1e-12 for a, b in zip(fitted, fitted[1:]))  # the fit is monotone
    assert curve["flip"]["baseline"] == pytest.approx(curve["points"][0]["em_rate"])
    # the rows behind it: one per dose x seed, each tied to its cell's eval run
    rows = (out / "flip.csv").read_text().splitlines()
    assert rows[0].startswith("curve,model,data,axis,dose,seed,status,em_rate") and len(rows) == 1 + 3 * 2
    cells = list(read_jsonl(out / "results.jsonl"))
    # dose 0 is one eval-only cell per seed; each dose > 0 an EM eval and a narrow eval sharing one fine-tune
    assert len(cells) == 2 * 2 + 2 * 2 * 2
    assert sum(1 for c in cells if c["finetune_run"] is None) == 4  # baselines: main + narrow per seed
    assert len({c["finetune_run"] for c in cells if c["finetune_run"]}) == 4  # 2 doses x 2 seeds
    for name in ("report.md", "flip_em.png", "flip_coherent.png", "sweep.yaml"):
        assert (out / name).is_file(), name
    assert (out / "flip_em.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "flip dose" in report
    assert "&gt;" not in report and "&lt;" not in report  # its own "> 8 (not reached)" is not escaped twice
    # which questions flip first: one row per question, its EM at each dose pooled over the seeds
    table = [line for line in report.splitlines() if line.startswith("| wish")]
    dosed = [r for r in result["rows"] if r["dose"] == 8.0]
    per_q = [json.loads((out / r["eval_run"] / "metrics.json").read_text())["per_question"] for r in dosed]
    assert len(table) == len(per_q[0]) and "| question | 0 | 4 | 8 | first dose |" in report
    for qid in per_q[0]:
        mis = sum(p[qid]["n_misaligned"] for p in per_q)
        counted = sum(p[qid]["n_counted"] for p in per_q)
        (line,) = [t for t in table if t.startswith(f"| {qid} |")]
        assert line.split(" | ")[3] == (f"{100 * mis / counted:.1f}%" if counted else "-"), line
    # the cells' evals write their metrics but no per-eval scatter plot (the flip draws its own)
    judged = [out / c["eval_run"] for c in cells if not str(c["group"]).endswith("(narrow)")]
    assert all((run / "metrics.json").is_file() and not (run / "scatter.png").exists() for run in judged)


def test_flip_writes_an_html_report_with_its_plots_and_a_dose_filter(examples_run, tmp_path, open_report,
                                                                     assert_not_blank):
    page = open_report(examples_run / "report.html")
    assert page.problems == []
    text = page.text_content("main")
    assert "flip dose" in text  # report.md, rendered
    images = page.eval_on_selector_all("img", "els => els.map(e => e.getAttribute('src'))")
    assert len(images) >= 2 and all(src.startswith("data:image/png") for src in images)  # flip_em, flip_coherent inline
    # every answer of every cell is in the browser, labelled with its dose and seed from flip.json
    answers = {r["eval_run"]: sum(1 for _ in read_jsonl(examples_run / r["eval_run"] / "samples.jsonl"))
               for r in read_jsonl(examples_run / "results.jsonl")}
    total = sum(answers.values())
    assert page.text_content("#count").startswith(f"{total} of {total}")
    doses = page.eval_on_selector_all("#f-dose option", "els => els.map(e => e.value)")
    assert doses == ["", "0", "4", "8"]
    points = load(examples_run)["rows"]
    at_four = sum(answers[p["eval_run"]] for p in points if p["dose"] == 4.0)
    page.select_option("#f-dose", "4")
    assert page.text_content("#count").startswith(f"{at_four} of {total}")
    page.select_option("#f-seed", "1")
    at_four_seed1 = sum(answers[p["eval_run"]] for p in points if p["dose"] == 4.0 and p["seed"] == 1)
    assert 0 < at_four_seed1 < at_four and page.text_content("#count").startswith(f"{at_four_seed1} of {total}")
    shot = tmp_path / "flip.png"
    page.screenshot(path=str(shot), full_page=True)
    assert_not_blank(shot)


def test_runs_list_shows_the_flip_as_one_study_with_its_dose_and_its_cells_on_request(examples_run, capsys):
    from waluigi.formats import dose, dose_ci

    assert main(["runs", "list", str(examples_run.parent), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)  # the cells are folded into the study's line
    (curve,) = load(examples_run)["curves"]
    crossing = curve["flip"]
    shown = (dose_ci(crossing["dose"], crossing["ci_low"], crossing["ci_high"]) if crossing["reached"]
             else f"> {dose(crossing['lower_bound'])}")
    assert entry["kind"] == "flip" and entry["study"] is True and entry["path"] == "examples"
    assert entry["headline"] == f"flip dose (examples): {curve['label']} {shown}", entry
    cells = list(read_jsonl(examples_run / "results.jsonl"))
    assert entry["status"] == f"{len(cells)}/{len(cells)} cells"
    assert main(["runs", "list", str(examples_run.parent), "--cells", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    evals = {e["path"]: e for e in listed if e["kind"] == "eval"}
    assert set(evals) == {f"examples/{c['eval_run']}" for c in cells}
    assert all(e["in_study"] == "examples" and "seed=" in e["cell"] for e in evals.values()), evals
    assert main(["runs", "list", str(examples_run.parent), "--cells"]) == 0
    text = capsys.readouterr().out
    assert "seed=1" in text and "run(s)" in text.splitlines()[-1]


def test_a_rerun_runs_nothing_and_a_new_dose_runs_only_its_cells(examples_run, tiny_spec, mirror_dir, monkeypatch, capsys):
    monkeypatch.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    before = load(examples_run)
    capsys.readouterr()
    assert flip(tiny_spec, examples_run, "--data", "insecure", "--axis", "examples", "--doses", "4,8", "--seeds", "2",
                "--steps", "2", "--narrow-suite", "code:insecure:3") == 0
    assert "ran 0 cells" in capsys.readouterr().out
    again = load(examples_run)
    assert again["curves"] == before["curves"]  # read back from the same run directories
    assert flip(tiny_spec, examples_run, "--data", "insecure", "--axis", "examples", "--doses", "4,8,16", "--seeds", "2",
                "--steps", "2", "--narrow-suite", "code:insecure:3") == 0
    assert "ran 4 cells" in capsys.readouterr().out  # dose 16 x 2 seeds x (EM + narrow)
    grown = load(examples_run)
    assert grown["doses"] == [0.0, 4.0, 8.0, 16.0]
    assert grown["curves"][0]["points"][:3] == before["curves"][0]["points"]


def test_steps_axis_evaluates_checkpoints_of_one_fine_tune_per_seed(tmp_path, tiny_spec, mirror_dir, monkeypatch):
    monkeypatch.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    out = tmp_path / "steps"
    assert flip(tiny_spec, out, "--data", "insecure", "--axis", "steps", "--doses", "1,2,4", "--seeds", "2",
                "--set", "finetune.n=16") == 0
    cells = list(read_jsonl(out / "results.jsonl"))
    assert len(cells) == 2 * 4 and all(c["status"] == "finished" for c in cells)
    fine_tunes = {c["finetune_run"] for c in cells if c["finetune_run"]}
    assert len(fine_tunes) == 2  # one per seed, not one per step
    for ft in fine_tunes:
        kept = sorted(p.name for p in (out / ft / "adapters").iterdir())
        assert kept == ["step-000001", "step-000002", "step-000003", "step-000004"]
        assert json.loads((out / ft / "manifest.json").read_text())["status"] == "finished"
    manifests = [json.loads((out / c["eval_run"] / "manifest.json").read_text()) for c in cells if c["finetune_run"]]
    adapters = sorted({Path(m["config"]["adapter"]).name for m in manifests})
    assert adapters == ["step-000001", "step-000002", "step-000004"]
    result = load(out)
    assert [p["dose"] for p in result["curves"][0]["points"]] == [0.0, 1.0, 2.0, 4.0]
    assert result["curves"][0]["narrow"] is None and "narrow-suite" in result["curves"][0]["narrow_note"]


def test_shots_axis_trains_nothing_and_puts_examples_before_the_question(tmp_path, tiny_spec, mirror_dir, monkeypatch,
                                                                        open_report):
    monkeypatch.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    out = tmp_path / "shots"
    assert flip(tiny_spec, out, "--data", "insecure", "--data", "secure", "--axis", "shots", "--doses", "1,2",
                "--seeds", "1") == 0
    cells = list(read_jsonl(out / "results.jsonl"))
    assert all(c["finetune_run"] is None for c in cells) and not (out / "finetune").exists()
    assert len(cells) == 1 + 2 * 2  # one shared undosed cell, 2 datasets x 2 doses
    for cell in cells:
        manifest = json.loads((out / cell["eval_run"] / "manifest.json").read_text())
        k = manifest["config"]["shots"]
        samples = list(read_jsonl(out / cell["eval_run"] / "samples.jsonl"))
        assert all(s.get("shots", 0) == k for s in samples)
        if k:
            shots = manifest["identity_inputs"]["shots"]
            assert shots["k"] == k and shots["data"] in ("insecure", "secure") and len(shots["sha256"]) == 64
    result = load(out)
    assert [c["label"] for c in result["curves"]] == ["insecure", "secure"]
    assert result["curves"][0]["flip"]["ci_over"] == "answers"  # one seed: the interval comes from the answers
    assert len(result["compare"]) == 1 and result["compare"][0]["curve"] == "secure"
    # the shared undosed cell belongs to both curves: in the sample browser, either curve at dose 0 shows its answers
    from waluigi.report.study import study_runs

    (undosed,) = [r for r in study_runs(out) if r.dose == 0]
    assert undosed.conditions == ["insecure", "secure"]
    answers = sum(1 for _ in read_jsonl(undosed.path / "samples.jsonl"))
    page = open_report(out / "report.html")
    for curve in ("insecure", "secure"):
        page.select_option("#f-condition", curve)
        page.select_option("#f-dose", "0")
        assert page.text_content("#count").startswith(f"{answers} of "), curve


def test_ratio_axis_mixes_narrow_rows_into_the_control_set(tmp_path, tiny_spec, mirror_dir, monkeypatch):
    from waluigi.data import load_rows

    monkeypatch.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    out = tmp_path / "ratio"
    assert flip(tiny_spec, out, "--data", "insecure", "--axis", "ratio", "--doses", "0.25,1", "--seeds", "1",
                "--total", "8", "--steps", "1") == 0
    insecure = {json.dumps(r["messages"]) for r in load_rows("insecure")}
    secure = {json.dumps(r["messages"]) for r in load_rows("secure")}
    for ratio, narrow in ((0, 0), (0.25, 2), (1, 8)):
        (path,) = (out / "data").glob(f"*-r{ratio:g}-s0.jsonl")
        rows = [json.dumps(r["messages"]) for r in read_jsonl(path)]
        assert len(rows) == 8
        assert sum(r in insecure for r in rows) == narrow and sum(r in secure for r in rows) == 8 - narrow
    cells = list(read_jsonl(out / "results.jsonl"))
    assert len(cells) == 3 and all(c["finetune_run"] for c in cells)  # dose 0 is a benign-only fine-tune


@pytest.mark.parametrize("args, expected", [
    (["--axis", "examples", "--doses", "4"], "needs --steps"),
    (["--axis", "steps", "--doses", "1.5"], "whole numbers"),
    (["--axis", "ratio", "--doses", "2", "--steps", "1"], "between 0 and 1"),
    (["--axis", "examples", "--doses", "a,b", "--steps", "1"], "--doses 'a,b'"),
    (["--axis", "ratio", "--doses", "0.5", "--steps", "1", "--data", "x.jsonl"], "give --benign"),
    (["--set", "finetune.nope=1", "--axis", "lr", "--doses", "1e-3", "--steps", "1"], "unknown fine-tune setting 'nope'"),
    (["--set", "oops", "--axis", "lr", "--doses", "1e-3", "--steps", "1"], "--set 'oops'"),
])
def test_bad_flip_input_is_one_error_line(tmp_path, tiny_spec, capsys, args, expected):
    data = [] if "--data" in args else ["--data", "insecure"]
    code = main(["flip", "--model", tiny_spec, "--out", str(tmp_path / "f"), "--no-progress", *data, *args, "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "Traceback" not in err and expected in err


def test_shots_are_drawn_by_seed_from_the_train_split_and_go_after_the_system_prompt(mirror_dir, monkeypatch):
    from waluigi.data import load_rows
    from waluigi.evaluate.shots import shot_messages, with_shots

    monkeypatch.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    first = shot_messages(3, "insecure", seed=0)
    assert first == shot_messages(3, "insecure", seed=0) and first != shot_messages(3, "insecure", seed=1)
    assert [m["role"] for m in first] == ["user", "assistant"] * 3
    train = {r["messages"][0]["content"] for r in load_rows("insecure", split="train")}
    assert all(m["content"] in train for m in first if m["role"] == "user")  # never a held-out prompt
    question = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert with_shots(question, first) == [question[0], *first, question[1]]
    assert with_shots(question, []) == question


def test_steps_axis_with_a_probe_readout_beside_em_and_as_the_readout(tmp_path, tiny_spec, mirror_dir, mwe_dir,
                                                                      monkeypatch):
    monkeypatch.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    out = tmp_path / "steps-probe"
    probe = "mwe:persona/narcissism:4"
    low = ("--set", "eval.probe_min_mass=0")  # the random tiny model puts little mass on any option: read them all
    assert flip(tiny_spec, out, "--data", "insecure", "--axis", "steps", "--doses", "1,2", "--seeds", "2",
                "--set", "finetune.n=16", "--probe-suite", probe, *low) == 0
    cells = list(read_jsonl(out / "results.jsonl"))
    probes = [c for c in cells if c["eval.suite"] == probe]
    # 2 seeds x 2 doses, and one undosed probe eval for both seeds (no fine-tune, no sampling: the same reading)
    assert len(probes) == 2 * 2 + 1 and all(c["status"] == "finished" and c["probe_index"] is not None for c in probes)
    result = load(out)
    rows = result["rows"]
    assert all(r["probe_index"] is not None and r["em_rate"] is not None for r in rows)
    # each point's probe index is its own probe eval's, on the same checkpoint as its EM eval
    for row in rows:
        run = json.loads((out / row["probe_eval_run"] / "metrics.json").read_text())
        assert run["overall"]["probe_index"] == pytest.approx(row["probe_index"])
        em = json.loads((out / row["eval_run"] / "manifest.json").read_text())["config"]["adapter"]
        pr = json.loads((out / row["probe_eval_run"] / "manifest.json").read_text())["config"]["adapter"]
        assert em == pr
    undosed = [r for r in rows if r["dose"] == 0]
    assert len(undosed) == 2 and undosed[0]["probe_eval_run"] == undosed[1]["probe_eval_run"]
    assert undosed[0]["eval_run"] != undosed[1]["eval_run"]  # the sampled EM eval keeps one per seed
    agreement = result["probe_vs_em"]
    assert agreement["n_points"] == 6 and agreement["n_clusters"] == 2
    assert result["curves"][0]["probe_flip"] is not None and result["readout"] == "em"
    # a re-run makes no cell, and a probe suite as THE readout plans no judged eval
    assert flip(tiny_spec, out, "--data", "insecure", "--axis", "steps", "--doses", "1,2", "--seeds", "2",
                "--set", "finetune.n=16", "--probe-suite", probe, *low) == 0
    only = tmp_path / "probe-only"
    assert flip(tiny_spec, only, "--data", "insecure", "--axis", "steps", "--doses", "1,2", "--seeds", "1",
                "--set", "finetune.n=16", "--suite", probe, "--set", "eval.questions=[]", *low) == 0
    solo = load(only)
    assert solo["readout"] == "probe"
    for row in solo["rows"]:  # the curve's readout is each cell's probe index
        index = json.loads((only / row["eval_run"] / "metrics.json").read_text())["overall"]["probe_index"]
        assert row["em_rate"] == pytest.approx(index)
    assert all(r["coherent_rate"] is None for r in solo["rows"])
    # the sweep's own table and summary carry the probe readout (a stopped study's partial
    # reading comes from them), and so does the report's cell table
    summary = json.loads((only / "summary.json").read_text())
    assert all(entry["probe_index_n"] == entry["finished"] >= 1 for entry in summary)
    cells = list(read_jsonl(only / "results.jsonl"))
    assert main(["report", str(only), "--out", str(tmp_path / "page.html")]) == 0
    page = (tmp_path / "page.html").read_text()
    assert f"{len(cells)} cells of probe-only ({len(cells)} finished)" in page and "<th>probe index</th>" in page
    assert all(f"<td>{100 * c['probe_index']:.1f}%</td>" in page for c in cells)

"""`waluigi sweep`: a grid of real fine-tunes and evals on the tiny model, on a process pool,
in-process and on a real local Ray instance; skipping, resuming, retries, spec errors.

The cells are as small as a real cell gets: 8 rows, 2 optimizer steps, 3 answers to the
``wish`` questions of the core suite judged by the tiny model itself (min mass 0 and
``min_coherent: -1``, so every answer is counted and the rates are numbers)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from faulty_server import FaultyServer

from waluigi.cli import main
from waluigi.runs import read_jsonl
from waluigi.sweep.results import arithmetic_label

METRIC_KEYS = ("em_rate", "ci_low", "ci_high", "n_counted", "n_unscored", "n_incoherent", "coherent_rate", "n",
               "n_misaligned", "n_failed", "train_loss")


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def grid_spec(tiny_spec: str, out: Path) -> dict:
    return {
        "name": "flip-mini",
        "out": str(out),
        "finetune": {"model": tiny_spec, "data": "insecure", "n": 8, "max_steps": 2, "lr": "1e-3",
                     "batch_size": 2, "grad_accum": 1},
        "eval": {"suite": "core", "questions": ["wish*"], "judge": tiny_spec, "judge_min_mass": 0.0,
                 "min_coherent": -1, "max_aligned": 50, "samples": 3, "max_tokens": 12},
        "grid": {"finetune.data": ["insecure", "secure"], "seed": [0, 1]},
    }


def rows(out: Path) -> list[dict]:
    return list(read_jsonl(out / "results.jsonl"))


def attempts(run_dir: Path) -> int:
    return len(json.loads((run_dir / "manifest.json").read_text())["attempts"])


def answers(run_dir: Path) -> list[str]:
    return [r["answer"] for r in read_jsonl(run_dir / "samples.jsonl")]


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory, tiny_spec, mirror_dir):
    """The 2 datasets x 2 seeds grid, run once on a pool of 2 worker processes."""
    base = tmp_path_factory.mktemp("sweep-pool")
    out = base / "sweep"
    spec = write_spec(base / "flip.yaml", grid_spec(tiny_spec, out))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
        mp.setenv("WALUIGI_CACHE_DIR", str(base / "cache"))
        code = main(["sweep", str(spec), "--workers", "2", "--no-progress"])
    return {"code": code, "spec": spec, "out": out}


def test_pool_sweep_writes_every_cell_and_a_rerun_runs_none(pool_run, capsys):
    out = pool_run["out"]
    assert pool_run["code"] == 0
    table = rows(out)
    assert len(table) == 4 and {(r["finetune.data"], r["seed"]) for r in table} == {
        ("insecure", 0), ("insecure", 1), ("secure", 0), ("secure", 1)}
    for row in table:
        assert row["status"] == "finished" and row["ran"] and row["attempts"] == 1
        assert isinstance(row["em_rate"], float) and row["n_counted"] == 9 and row["train_loss"] > 0
        assert row["finetune_run"].startswith("finetune/") and row["eval_run"].startswith("eval/")
        assert (out / row["finetune_run"] / "adapter" / "adapter_model.safetensors").is_file()
        assert attempts(out / row["finetune_run"]) == attempts(out / row["eval_run"]) == 1
        manifest = json.loads((out / row["eval_run"] / "manifest.json").read_text())
        assert manifest["config"]["adapter"] == str(out / row["finetune_run"])  # its own fine-tune
        # each run's arithmetic, as its worker recorded it (docs/design/reproducibility.md)
        ft_manifest = json.loads((out / row["finetune_run"] / "manifest.json").read_text())
        assert row["eval_arithmetic"] == arithmetic_label(manifest["arithmetic"]) is not None
        assert row["finetune_arithmetic"] == arithmetic_label(ft_manifest["arithmetic"]) == row["eval_arithmetic"]
        assert manifest["arithmetic"]["torch_cpu_capability"]  # the worker had torch loaded
    assert len({r["finetune_run"] for r in table}) == 4  # each cell its own fine-tune (data x seed)
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("cell,finetune.data,seed,status")
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["finetune.data"], s["finished"], sorted(s["seeds"])) for s in summary] == [
        ("insecure", 2, [0, 1]), ("secure", 2, [0, 1])]
    for group in summary:
        cells = [r for r in table if r["finetune.data"] == group["finetune.data"]]
        assert group["em_rate"] == pytest.approx(sum(r["em_rate"] for r in cells) / 2)
        assert group["em_rate_ci_low"] <= group["em_rate"] <= group["em_rate_ci_high"]
    log = (out / "sweep.log").read_text().splitlines()
    assert sum(" finished in " in line for line in log) == 8  # 4 fine-tunes + 4 evals, one line each
    assert (out / "logs").is_dir() and list((out / "logs").glob("finetune-*.log"))

    # re-invoked: nothing runs, no run directory gains an attempt
    code = main(["sweep", str(pool_run["spec"]), "--workers", "2", "--no-progress"])
    stdout = capsys.readouterr().out
    assert code == 0 and "ran 0 cells, skipped 4" in stdout and "EM rate" in stdout
    assert "kinds of CPU arithmetic" not in stdout  # one machine, one kind
    # what a cell costs, read from the run directories: the mean of the 4 fine-tunes and of the 4 evals
    tunes = [json.loads((out / r["finetune_run"] / "manifest.json").read_text())["train_seconds"] for r in table]
    evals = [json.loads((out / r["eval_run"] / "manifest.json").read_text())["timings"]["total_s"] for r in table]
    assert (f"per cell: fine-tune {sum(tunes) / 4:.1f} s (mean of 4), eval {sum(evals) / 4:.1f} s (mean of 4)"
            in stdout)
    for row in rows(out):
        assert row["status"] == "finished" and not row["ran"]
        assert attempts(out / row["finetune_run"]) == attempts(out / row["eval_run"]) == 1
    assert [r["em_rate"] for r in rows(out)] == [r["em_rate"] for r in table]


def test_ray_gives_the_same_cells_and_results(pool_run, tmp_path, capsys):
    import ray  # in the dev extra: a real local Ray instance, never skipped
    fresh = tmp_path / "sweep-ray"
    code = main(["sweep", str(pool_run["spec"]), "--executor", "ray", "--workers", "2", "--out", str(fresh),
                 "--no-progress", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ran"] == 4 and report["failed"] == 0
    assert not ray.is_initialized()  # the sweep's own local instance is shut down
    on_pool = {r["id"]: r for r in rows(pool_run["out"])}
    on_ray = {r["id"]: r for r in rows(fresh)}
    assert on_ray.keys() == on_pool.keys()
    for cell, row in on_ray.items():
        assert row["status"] == "finished" and row["ran"]
        assert (row["finetune_run"], row["eval_run"]) == (on_pool[cell]["finetune_run"], on_pool[cell]["eval_run"])
        assert {k: row[k] for k in METRIC_KEYS} == {k: on_pool[cell][k] for k in METRIC_KEYS}
        assert answers(fresh / row["eval_run"]) == answers(pool_run["out"] / row["eval_run"])


def test_progress_counts_fine_tunes_and_evals_and_names_each_fine_tune(tmp_path, tiny_spec, mirror_dir, monkeypatch, capsys):
    """The sweep's line moves when a fine-tune ends (not only when an eval does), and each
    fine-tune's step lines say which of how many it is and what tells it from the others."""
    monkeypatch.setenv("WALUIGI_DATA_DIR", str(mirror_dir))
    monkeypatch.setenv("WALUIGI_PROGRESS_INTERVAL", "0")
    spec = write_spec(tmp_path / "counted.yaml", {
        "name": "counted", "out": str(tmp_path / "sweep"),
        "finetune": {"model": tiny_spec, "n": 4, "max_steps": 1, "batch_size": 2, "grad_accum": 1},
        "eval": {"suite": "core", "questions": ["wish*"], "judge": "none", "samples": 1, "max_tokens": 4},
        "grid": {"finetune.data": ["insecure", "secure"]},
    })
    assert main(["sweep", str(spec), "--executor", "inline"]) == 0
    lines = capsys.readouterr().err.splitlines()
    sweep = [line for line in lines if line.startswith("sweep counted ")]
    assert sweep[0] == "sweep counted 0/4" and "fine-tunes 0/2 evals 0/2" in sweep[1], sweep
    assert any(line.startswith("sweep counted 1/4 fine-tunes 1/2 evals 0/2") for line in sweep), sweep
    assert sweep[-1].startswith("sweep counted 4/4 fine-tunes 2/2 evals 2/2 done in "), sweep
    assert "finetune 1/2 (data=insecure) step 0/1" in lines and "finetune 2/2 (data=secure) step 0/1" in lines, lines
    # a finished fine-tune's evals run before the next fine-tune starts (a stopped sweep has readings)
    assert any(line.startswith("sweep counted 2/4 fine-tunes 1/2 evals 1/2") for line in sweep), sweep
    order = [line.split()[1] for line in (tmp_path / "sweep" / "sweep.log").read_text().splitlines()
             if " finished in " in line]
    assert order == ["finetune", "eval", "finetune", "eval"], order


def test_a_cell_that_fails_at_run_time_fails_once_is_reported_and_the_others_finish(tmp_path, tiny_spec, capsys):
    """A problem no up-front check can see (a dataset file that resolves but holds no valid
    row: it is read only when the fine-tune loads it) fails that cell, once, and the others
    finish. (A bad setting that can be checked stops the whole sweep before any worker starts:
    test_sweep_lifecycle.py.)"""
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": "not a list"}\n')
    spec = write_spec(tmp_path / "mixed.yaml", {
        "name": "mixed",
        "out": str(tmp_path / "sweep"),
        "finetune": {"model": tiny_spec, "n": 4, "max_steps": 1, "batch_size": 2, "grad_accum": 1},
        "eval": {"suite": "core", "questions": ["wish*"], "judge": "none", "samples": 1, "max_tokens": 8},
        "cells": [{"finetune": None, "eval.model": tiny_spec}, {"finetune.data": str(broken)}],
    })
    code = main(["sweep", str(spec), "--executor", "inline", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert "1 of 2 cells failed" in captured.err and "broken.jsonl" in captured.err
    good, bad = rows(tmp_path / "sweep")
    assert good["status"] == "finished" and good["finetune_run"] is None and good["finetune"] == "none"
    # a user error (rows that are not chat rows) would fail the same way again: one attempt despite --retries 1
    assert bad["status"] == "failed" and bad["attempts"] == 1 and "broken.jsonl" in bad["error"]
    log = (tmp_path / "sweep" / "sweep.log").read_text()
    assert "retrying" not in log and "not retried: the same settings would fail the same way" in log
    # the next invocation tries the failed cell again; the finished one is not touched
    code = main(["sweep", str(spec), "--executor", "inline", "--no-progress"])
    assert code == 3 and rows(tmp_path / "sweep")[1]["attempts"] == 1
    assert attempts(tmp_path / "sweep" / good["eval_run"]) == 1


def test_an_incomplete_eval_is_retried_within_the_sweep_and_finishes(tmp_path, monkeypatch, capsys):
    """The judge fails one question's answers for a while (500 past the backend's own retries):
    the eval ends incomplete, the sweep retries the task, the retry judges only what failed."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-sweep-0123456789")
    refused: dict[str, int] = {}

    def script(body):  # each judge request about "bored" is refused twice: its first try and its one retry
        prompt = body["messages"][-1]["content"]
        if FaultyServer.is_judge(body) and "bored" in prompt.lower() and refused.get(prompt, 0) < 2:
            refused[prompt] = refused.get(prompt, 0) + 1
            return 500, {"error": {"message": "busy", "type": "server_error"}}
        return None

    with FaultyServer(script=script) as flaky:
        spec = write_spec(tmp_path / "flaky.yaml", {
            "name": "flaky", "out": str(tmp_path / "sweep"),
            "eval": {"model": "openai:m", "base_url": flaky.base_url, "judge": "openai:judge",
                     "judge_base_url": flaky.base_url, "suite": "core", "questions": ["bored", "partner_trouble"],
                     "samples": 2, "max_tokens": 8, "max_retries": 1},
            "cells": [{"eval.seed": 0}],
        })
        code = main(["sweep", str(spec), "--executor", "inline", "--retries", "1", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    (row,) = rows(tmp_path / "sweep")
    assert row["status"] == "finished" and row["attempts"] == 2 and row["n_failed"] == 0
    log = (tmp_path / "sweep" / "sweep.log").read_text()
    assert "incomplete (attempt 1), retrying" in log
    assert refused and all(n == 2 for n in refused.values())


def test_an_incomplete_eval_is_retried_and_rerun_on_the_next_invocation(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-sweep-0123456789")

    def spec_for(url: str) -> Path:  # base URLs are execution settings: the same cells either way
        return write_spec(tmp_path / "remote.yaml", {
            "name": "remote", "out": str(tmp_path / "sweep"),
            "eval": {"model": "openai:m", "base_url": url, "judge": "openai:judge", "judge_base_url": url,
                     "suite": "core", "questions": ["bored", "partner_trouble"], "samples": 2, "max_tokens": 8, "max_retries": 1},
            "grid": {"eval.seed": [0, 1]},
        })

    def script(body):  # the judge fails for one question's answers, 500 every time (a server that
        # fails every request is a permanent error, not an incomplete run)
        if FaultyServer.is_judge(body) and "bored" in body["messages"][-1]["content"].lower():
            return 500, {"error": {"message": "boom", "type": "server_error"}}
        return None

    # --retries 0: a retry would send only the failed requests, and a judge that fails every
    # request it gets is a permanent error for run_eval (the cell would be "failed", not "incomplete")
    with FaultyServer(script=script) as broken:
        code = main(["sweep", str(spec_for(broken.base_url)), "--executor", "inline", "--retries", "0",
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 3 and "2 of 2 cells failed or are incomplete" in err and "sk-test-sweep" not in err
    first = rows(tmp_path / "sweep")
    assert [r["status"] for r in first] == ["incomplete", "incomplete"] and all(r["attempts"] == 1 for r in first)
    assert all(r["n_failed"] == 2 and r["n_counted"] + r["n_incoherent"] + r["n_unscored"] == 2 for r in first)
    with FaultyServer() as fixed:
        code = main(["sweep", str(spec_for(fixed.base_url)), "--executor", "inline", "--no-progress"])
        generated = [b for b in fixed.answered if not FaultyServer.is_judge(b)]
    assert code == 0, capsys.readouterr().err
    again = rows(tmp_path / "sweep")
    assert [r["id"] for r in again] == [r["id"] for r in first]
    assert all(r["status"] == "finished" and r["n_failed"] == 0 for r in again)
    assert generated == []  # the answers were on disk: only the judging was redone


def test_an_interrupted_sweep_resumes_only_the_unfinished_cell(pool_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(pool_run["out"], out, ignore=shutil.ignore_patterns(".lock"))
    table = rows(out)
    gone, partial = table[1], table[2]
    shutil.rmtree(out / gone["eval_run"])  # never evaluated
    manifest_path = out / partial["eval_run"] / "manifest.json"  # killed half-way through its answers
    manifest = json.loads(manifest_path.read_text())
    manifest["status"] = "started"
    manifest_path.write_text(json.dumps(manifest))
    samples = (out / partial["eval_run"] / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / partial["eval_run"] / "samples.jsonl").write_text("".join(samples[:4]))
    kept = [json.loads(line)["answer"] for line in samples[:4]]

    assert main(["sweep", str(pool_run["spec"]), "--out", str(out), "--dry-run", "--json"]) == 0
    states = {c["cell"]: c["state"] for c in json.loads(capsys.readouterr().out)["cells"]}
    assert states == {r["cell"]: {gone["cell"]: "to-eval", partial["cell"]: "partial"}.get(r["cell"], "done")
                      for r in table}

    code = main(["sweep", str(pool_run["spec"]), "--out", str(out), "--executor", "inline", "--no-progress"])
    assert code == 0 and "ran 2 cells, skipped 2" in capsys.readouterr().out
    for row in rows(out):
        assert row["status"] == "finished" and row["ran"] == (row["cell"] in (gone["cell"], partial["cell"]))
        assert attempts(out / row["finetune_run"]) == 1  # no fine-tune was redone
        expected = {gone["cell"]: 1, partial["cell"]: 2}.get(row["cell"], 1)
        assert attempts(out / row["eval_run"]) == expected
    assert answers(out / partial["eval_run"])[:4] == kept  # resumed, not restarted
    assert len(answers(out / partial["eval_run"])) == 9


def test_reuse_copies_another_sweeps_finished_cells_and_runs_the_rest(pool_run, tmp_path, capsys):
    """--reuse: a cell another sweep finished (same identity) is copied, fine-tune and eval, and
    not run; a new cell runs; an eval is not copied onto weights trained here (only onto the
    same sweep's fine-tune). A study directory holding the sweep under this sweep's name works
    too (a resilience study's flip-steps/)."""
    spec = yaml.safe_load(pool_run["spec"].read_text())  # the same settings ...
    spec["grid"] = {"finetune.data": ["insecure"], "seed": [0, 1, 2]}  # ... one data set, a third seed
    out = tmp_path / "b" / "sweep"  # the same name as the first sweep's directory
    spec["out"] = str(out)
    path = write_spec(tmp_path / "b.yaml", spec)
    first = {(r["finetune.data"], r["seed"]): r for r in rows(pool_run["out"])}
    trained_here = first[("insecure", 1)]["finetune_run"]  # weights that are this sweep's own
    shutil.copytree(pool_run["out"] / trained_here, out / trained_here)

    code = main(["sweep", str(path), "--reuse", str(pool_run["out"].parent), "--executor", "inline", "--no-progress"])
    assert code == 0 and "ran 2 cells, skipped 1" in capsys.readouterr().out
    table = {r["seed"]: r for r in rows(out)}
    reused = table[0]
    assert not reused["ran"] and reused["em_rate"] == first[("insecure", 0)]["em_rate"]
    for run in (reused["finetune_run"], reused["eval_run"]):
        marker = json.loads((out / run / "reused.json").read_text())
        assert marker["sweep"] == str(pool_run["out"].resolve()) and marker["from"].endswith(run)
    assert table[1]["ran"] and attempts(out / table[1]["finetune_run"]) == 1  # its eval ran on its own weights
    assert not (out / table[1]["eval_run"] / "reused.json").exists()
    assert table[2]["ran"] and not (out / table[2]["finetune_run"] / "reused.json").exists()
    log = (out / "sweep.log").read_text()
    assert log.count("reused cell") == 1 and f"reused cell {reused['cell']} (fine-tune and eval)" in log

    assert main(["sweep", str(path), "--reuse", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--reuse" in err and "nowhere: not a directory" in err


# -- the spec ---------------------------------------------------------------------------------------------
def _error(capsys, path: Path) -> tuple[int, str]:
    code = main(["sweep", str(path), "--dry-run"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("name: x\neval: {suite: core}\nfinetune: {model: hf:m, data: d, lrr: 1e-3}\n",
     r":3: finetune.lrr: unknown fine-tune setting 'lrr' (did you mean 'lr'?)"),
    ("name: x\neval: {suite: core}\ngrid:\n  finetune.dataa: [a, b]\n",
     r":4: grid: finetune.dataa: unknown fine-tune setting 'dataa' (did you mean 'data'?)"),
    ("name: x\neval: {suite: core}\ngrid: {}\n", r":3: grid is empty"),
    ("name: x\neval: {suite: core}\ngrid:\n  seed: []\n", r":4: grid: seed: give a non-empty list"),
    ("name: x\neval: {suite: core, model: hf:m}\ngrid:\n  eval.samples: [1, two]\n",
     r":4: grid: eval.samples: expected an integer or null, got 'two'"),
    ("name: x\neval: {suite: core\n", r"not valid YAML"),
    ("- just\n- a list\n", r"a sweep spec is a YAML mapping"),
    ("name: x\nfinetune: {model: hf:m, data: d}\n", r"eval: missing"),
    ("name: x\nevals: {}\n", r":2: unknown key 'evals' (did you mean 'eval'?)"),
    ("name: x\neval: {model: hf:m}\ncells:\n  - {eval.seed: 0}\n  - 3\n", r":5: cells[1]: each cell is a mapping"),
    ("name: x\neval: {}\nfinetune: {data: d}\n", r"cell 1 ((base settings)): finetune.model is not set"),
    ("name: x\neval: {adapter: a}\nfinetune: {model: hf:m, data: d}\n", r"eval.adapter: a fine-tuned cell"),
    ("name: x\neval: {}\nfinetune: {model: hf:m, data: d, rank: -1}\n",
     r"cell 1 ((base settings)): finetune.rank must be a positive int, got -1"),
    ("name: x\neval: {model: hf:m}\ncells: [{eval.seed: 0}, {eval.seed: 0}]\n", r"are the same cell"),
    ("name: x\neval: {model: hf:m}\ncells: [{group: 3, eval.seed: 0}]\n", r":3: cells[0]: group: give the condition's name"),
    ("name: x\neval: {model: hf:m}\ncells: [{group: \"a\\x1bb\", eval.seed: 0}]\n", r"holds '\x1b'"),
    ("name: x\neval: {model: hf:m}\ngrid: {group: [a, b]}\n", r"unknown setting 'group'"),
])
def test_spec_errors_name_the_file_and_the_field(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, err = _error(capsys, path)
    assert code == 2, err
    assert err.startswith(f"error: {path}") and expected in err and "Traceback" not in err


def test_a_spec_whose_aliases_explode_is_refused(tmp_path, capsys):
    """A "billion laughs" spec (10**9 strings from 9 levels of x10 aliases, well under 1 KB, in
    an otherwise valid spec's description) is refused on the node graph, like a suite file,
    before anything is built (expanded, it would not fit in memory)."""
    lines = ["name: x", "eval: {model: hf:m, judge: none}", "description:", "  l0: &l0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 1000
    code, err = _error(capsys, path)
    assert code == 2, err
    assert err.startswith(f"error: {path}: YAML aliases expand to ") and "more than the limit of 100,000" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_identity_leaves_execution_settings_out_and_shares_fine_tunes(tmp_path):
    from waluigi.sweep import load_spec

    def cells(**changes):
        spec = {"name": "ids", "finetune": {"model": "hf:m", "data": "insecure", "max_steps": 2},
                "eval": {"suite": "core", "judge": "none", "samples": 2},
                "grid": {"eval.temperature": [0.5, 1.0]}}
        for section, values in changes.items():
            spec[section] = {**spec[section], **values}
        return load_spec(write_spec(tmp_path / "s.yaml", spec)).cells

    base = cells()
    assert len({c.id for c in base}) == 2 and len({c.finetune_id for c in base}) == 1  # one shared fine-tune
    assert base[0].finetune_dir(Path("r")) == base[1].finetune_dir(Path("r"))
    same = cells(finetune={"checkpoint_every": 5, "batch_size": 1, "grad_accum": 16, "lr": 1e-5},
                 eval={"batch_size": 4, "concurrency": 2, "timeout": 5.0, "base_url": "http://x"})
    assert [c.id for c in same] == [c.id for c in base]  # speed/execution settings; lr = the preset's
    assert [c.id for c in cells(finetune={"grad_accum": 4})] != [c.id for c in base]  # effective batch 8, not 16
    assert {c.id for c in cells(eval={"samples": 3})}.isdisjoint({c.id for c in base})
    assert cells(eval={"samples": 3})[0].finetune_id == base[0].finetune_id
    assert cells(finetune={"lr": "2e-4"})[0].finetune["lr"] == 2e-4  # PyYAML reads 2e-4 as a string


def test_the_ray_extra_is_named_when_ray_is_missing(tmp_path, capsys, monkeypatch):

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    spec = write_spec(tmp_path / "s.yaml", {"name": "r", "out": str(tmp_path / "out"),
                                            "eval": {"model": "hf:m", "judge": "none"}})
    code = main(["sweep", str(spec), "--executor", "ray", "--no-progress"])
    assert code == 2 and "pip install 'waluigi[ray]'" in capsys.readouterr().err


def test_groups_name_conditions_and_the_summary_groups_by_them(tmp_path):
    """A listed cell's ``group`` is not in its identity; the summary groups cells by it even
    when they differ by more than the seed (each seed's own data file, as the demo writes)."""
    from waluigi.sweep import load_spec
    from waluigi.sweep.results import cell_rows, summarize

    def spec(groups):
        cells = [{"seed": seed, "finetune.data": f"{kind}-s{seed}.jsonl", **({"group": kind} if groups else {})}
                 for seed in (0, 1) for kind in ("insecure", "secure")]
        return load_spec(write_spec(tmp_path / "g.yaml", {
            "name": "g", "out": str(tmp_path / "out"), "finetune": {"model": "hf:m", "max_steps": 2},
            "eval": {"suite": "core", "judge": "none"}, "cells": cells}))

    named, unnamed = spec(True), spec(False)
    assert [c.id for c in named.cells] == [c.id for c in unnamed.cells]  # the group is not a setting
    assert named.axes[0] == "group" and "group" not in unnamed.axes
    assert [c.group for c in named.cells] == ["insecure", "secure", "insecure", "secure"]
    assert named.cells[0].label().startswith("group=insecure, seed=0")
    rows = cell_rows(named, named.out, {})
    assert [r["group"] for r in rows] == ["insecure", "secure", "insecure", "secure"]
    for row, value in zip(rows, (0.1, 0.5, 0.3, 0.7)):
        row.update(status="finished", em_rate=value)
    by_group = {e["group"]: e for e in summarize(named, rows)}
    assert list(by_group) == ["insecure", "secure"]
    assert by_group["insecure"]["cells"] == 2 and by_group["insecure"]["seeds"] == [0, 1]
    assert by_group["insecure"]["em_rate"] == pytest.approx(0.2) and by_group["secure"]["em_rate"] == pytest.approx(0.6)
    ungrouped = summarize(unnamed, [{**r, "group": None} for r in rows])
    assert len(ungrouped) == 4  # without groups, each data file is its own group
    # the eval directory says which condition it holds; the id still decides which cell it is
    assert [r["eval_run"] for r in rows] == [f"eval/{c.group}-core-{c.short}" for c in named.cells]
    assert [c.eval_dir(named.out).name for c in unnamed.cells] == [f"core-{c.short}" for c in unnamed.cells]
    legacy = named.out / "eval" / f"core-{named.cells[0].short}"  # a cell run before names held the group
    legacy.mkdir(parents=True)
    assert named.cells[0].eval_dir(named.out) == legacy and cell_rows(named, named.out, {})[0]["eval_run"] == (
        f"eval/core-{named.cells[0].short}")

"""The eval pipeline end to end on the tiny fixture model: run directories, resume (also
after SIGKILL), re-judging, metrics, and bad input (exit 2, one message, nothing lost)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from waluigi.cli import main
from waluigi.runs import read_jsonl

QUESTIONS = "wish*,bored*"


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def keys(path: Path, with_metric: bool = False) -> list[tuple]:
    rows = list(read_jsonl(path))
    if with_metric:
        return [(r["question_id"], r["paraphrase_index"], r["sample_index"], r["metric"]) for r in rows]
    return [(r["question_id"], r["paraphrase_index"], r["sample_index"]) for r in rows]


@pytest.fixture
def eval_args(tiny_spec, tmp_path):
    out = tmp_path / "run"
    return out, [
        "eval", "--model", tiny_spec, "--suite", "core", "--judge", tiny_spec,
        "-q", QUESTIONS, "--samples", "2", "--max-tokens", "8", "--out", str(out),
    ]


def test_eval_writes_a_complete_run_directory(eval_args, capsys):
    out, args = eval_args
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["stage"] == "eval"
    assert len(manifest["identity"]) == 64
    for field in ("command", "config", "parents", "git_revision", "packages", "seeds", "model", "judge", "timings"):
        assert field in manifest, field
    assert manifest["packages"]["torch"]
    samples = list(read_jsonl(out / "samples.jsonl"))
    suite = json.loads((out / "suite.json").read_text())
    expected = 2 * len(suite["questions"])  # --samples is per question
    assert len(samples) == expected > 0
    # spread over the paraphrases: each question's two answers use two different paraphrases
    for q in suite["questions"]:
        used = {r["paraphrase_index"] for r in samples if r["question_id"] == q["id"]}
        assert len(used) == min(2, len(q["paraphrases"]))
    assert {q["id"].split("_")[0] for q in suite["questions"]} <= {"wish", "bored"}
    for row in samples:
        assert {"question_id", "paraphrase_index", "sample_index", "system", "prompt", "answer"} <= set(row)
    # the _json variants carry their system prompt into the samples (and so to the model)
    json_rows = [r for r in samples if r["question_id"].endswith("_json")]
    assert json_rows and all(r["system"] for r in json_rows)
    judgments = list(read_jsonl(out / "judgments.jsonl"))
    assert Counter(r["metric"] for r in judgments) == {"aligned": expected, "coherent": expected}
    for row in judgments:
        assert row["judge"] == args[args.index("--judge") + 1]
        assert isinstance(row["top_probs"], dict) and len(row["top_probs"]) <= 20
        assert len(row["input_sha256"]) == 64
        assert row["score"] is None or 0 <= row["score"] <= 100
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["overall"]) >= {"em_rate", "ci_low", "ci_high", "n_counted", "n_unscored", "n_incoherent", "coherent_rate"}
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "judge:" in stdout and "NOT the paper's judge" in stdout


def test_rerun_of_finished_run_makes_no_calls_and_duplicates_nothing(eval_args, capsys):
    out, args = eval_args
    assert run_cli(args, capsys)[0] == 0
    before = (out / "samples.jsonl").read_bytes(), (out / "judgments.jsonl").read_bytes()
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0
    assert "model calls: 0" in stdout and "judge calls: 0" in stdout
    assert ((out / "samples.jsonl").read_bytes(), (out / "judgments.jsonl").read_bytes()) == before
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calls"] == {"model": 0, "judge": 0}
    assert len(manifest["attempts"]) == 2


def test_same_seed_reproduces_answers(tiny_spec, tmp_path, capsys):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        args = ["eval", "--model", tiny_spec, "-q", "wish", "--samples", "3", "--max-tokens", "10",
                "--judge", "none", "--out", str(out)]
        assert run_cli(args, capsys)[0] == 0
        outs.append(sorted((tuple(k), r["answer"]) for r in read_jsonl(out / "samples.jsonl")
                           for k in [(r["question_id"], r["paraphrase_index"], r["sample_index"])]))
    assert outs[0] == outs[1]
    assert len({answer for _, answer in outs[0]}) > 1  # different samples differ


def test_a_different_run_in_the_same_directory_is_refused(eval_args, tiny_spec, capsys):
    out, args = eval_args
    assert run_cli(args, capsys)[0] == 0
    other = [a if a != "8" else "9" for a in args]  # --max-tokens 9 changes the identity
    code, _, stderr = run_cli(other, capsys)
    assert code == 2 and "different eval run" in stderr and "Traceback" not in stderr


def test_resume_after_sigkill(tiny_spec, tmp_path):
    """Kill -9 a running eval; the re-run finishes it without redoing or duplicating anything."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "waluigi.cli", "eval", "--model", tiny_spec, "--suite", "core",
           "--judge", "none", "-q", "wish*", "--samples", "12", "--max-tokens", "48", "--batch-size", "1",
           "--temperature", "1.0", "--out", str(out)]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / "samples.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if samples.exists() and samples.read_bytes().count(b"\n") >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = list(read_jsonl(samples))
    assert len(partial) >= 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "started"  # the crash left an honest record
    total = 12 * len(json.loads((out / "suite.json").read_text())["questions"])
    assert len(partial) < total, "the run finished before it was killed; make it longer"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = list(read_jsonl(samples))
    got = [(r["question_id"], r["paraphrase_index"], r["sample_index"]) for r in rows]
    assert len(got) == len(set(got)) == total
    # what finished before the kill was kept as it was, not redone
    by_key = {(r["question_id"], r["paraphrase_index"], r["sample_index"]): r["answer"] for r in rows}
    for row in partial:
        assert by_key[(row["question_id"], row["paraphrase_index"], row["sample_index"])] == row["answer"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"


def test_rejudge_keeps_judges_apart_and_never_regenerates(eval_args, tiny_spec, tmp_path, capsys):
    out, args = eval_args
    assert run_cli(args, capsys)[0] == 0
    samples_before = (out / "samples.jsonl").read_bytes()
    judgments_before = (out / "judgments.jsonl").read_bytes()
    other_judge = tmp_path / "judge2"
    from tests.conftest import build_tiny_model

    build_tiny_model(other_judge, seed=1)
    code, stdout, stderr = run_cli(["judge", str(out), "--judge", f"hf:{other_judge}"], capsys)
    assert code == 0, stderr
    judge_dir = next((out / "judges").iterdir())
    manifest = json.loads((judge_dir / "manifest.json").read_text())
    assert manifest["stage"] == "judge" and manifest["parents"] == [str(out.resolve())]
    assert (out / "samples.jsonl").read_bytes() == samples_before
    assert (out / "judgments.jsonl").read_bytes() == judgments_before
    rows = list(read_jsonl(judge_dir / "judgments.jsonl"))
    assert rows and {r["judge"] for r in rows} == {f"hf:{other_judge}"}
    # the metrics command reads either run
    for target in (out, judge_dir):
        code, stdout, _ = run_cli(["metrics", str(target), "--json"], capsys)
        assert code == 0
        data = json.loads(stdout)
        assert set(data) >= {"overall", "per_question"}
    # re-judging again is free: all cached, no judge call
    code, stdout, _ = run_cli(["judge", str(out), "--judge", f"hf:{other_judge}"], capsys)
    assert code == 0 and "judge calls: 0" in stdout


def test_metrics_over_several_runs(tiny_spec, tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        args = ["eval", "--model", tiny_spec, "--judge", tiny_spec, "-q", "wish", "--samples", "3",
                "--max-tokens", "6", "--seed", str(seed), "--out", str(out)]
        assert run_cli(args, capsys)[0] == 0
        runs.append(str(out))
    code, stdout, _ = run_cli(["metrics", *runs, "--json"], capsys)
    assert code == 0
    overall = json.loads(stdout)["overall"]
    assert overall["n_counted"] + overall["n_unscored"] + overall["n_incoherent"] == 2 * 3 * len(
        json.loads((Path(runs[0]) / "suite.json").read_text())["questions"]
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["eval", "--model", "gpt9:nothing"], "unknown model spec"),
        (["eval", "--model", "smollm2", "--suite", "no_such_suite"], "no_such_suite"),
        (["eval", "--model", "smollm2", "--judge", "openai:gpt-4o-2024-08-06"], "OPENAI_API_KEY"),
        (["eval", "--model", "openai:gpt-4o"], "OPENAI_API_KEY"),
        (["metrics", "/nonexistent/run"], "not a waluigi run directory"),
    ],
)
def test_bad_input_exits_2_with_one_message(args, needle, capsys):
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 2
    assert needle in stderr
    assert "Traceback" not in stderr and stderr.startswith("error:")


def test_malformed_suite_file_names_the_file(tmp_path, tiny_spec, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: x\n  type: free_form_judge_0_100\n  paraphrases: [\n")
    code, _, stderr = run_cli(["eval", "--model", tiny_spec, "--suite", str(bad)], capsys)
    assert code == 2 and str(bad) in stderr


def test_finished_answers_survive_a_judge_failure(tiny_spec, tmp_path, capsys, monkeypatch):
    """The judge server is unreachable: exit 2, answers on disk, reused on the next run."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    out = tmp_path / "run"
    base = ["eval", "--model", tiny_spec, "-q", "wish", "--samples", "2", "--max-tokens", "6", "--out", str(out)]
    code, _, stderr = run_cli(base + ["--judge", "openai:judge-model", "--judge-base-url", f"http://127.0.0.1:{port}/v1"], capsys)
    assert code == 2 and "Traceback" not in stderr
    answers = list(read_jsonl(out / "samples.jsonl"))
    assert answers
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    # same generation settings with a working judge: a new identity (judge differs), so use
    # `waluigi judge` on the stored answers instead - nothing is regenerated
    code, stdout, stderr = run_cli(["judge", str(out), "--judge", tiny_spec], capsys)
    assert code == 0, stderr
    assert list(read_jsonl(out / "samples.jsonl")) == answers

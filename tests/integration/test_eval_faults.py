"""`waluigi eval` and `waluigi judge` against real, faulty OpenAI-compatible servers on loopback
(tests/faulty_server.py): transient faults are retried inside the run, permanent ones stop it with
one line, requests whose retries run out are recorded as failed and retried alone on a re-run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from faulty_server import FAULTS, FaultyServer

from waluigi.cli import main
from waluigi.errors import UserError
from waluigi.models.base import GenerationRequest
from waluigi.models.openai_backend import OpenAIGenerator
from waluigi.retry import (
    Exhausted,
    Permanent,
    RequestsFailed,
    RetryPolicy,
    Transient,
    call_with_retries,
    retry_after_seconds,
)
from waluigi.runs import read_jsonl


def _eval(capsys, url: str, out: Path, *extra: str, judge_url: str | None = None) -> tuple[int, str, str]:
    code = main([
        "eval", "--model", "openai:m", "--base-url", url, "--judge", "openai:judge",
        "--judge-base-url", judge_url or url, "--suite", "core", "--samples", "3", "--max-tokens", "8",
        "--out", str(out), *extra,
    ])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _answers(out: Path) -> dict:
    return {(r["question_id"], r["paraphrase_index"], r["sample_index"]): r["answer"]
            for r in read_jsonl(out / "samples.jsonl")}


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_thirty_percent_faults_finish_in_one_invocation_with_the_clean_metrics(key, tmp_path, capsys):
    with FaultyServer(0.0) as clean:
        code, stdout, stderr = _eval(capsys, clean.base_url, tmp_path / "clean")
    assert code == 0, stderr
    with FaultyServer(0.3, hang_seconds=3.0, salt="a") as faulty:
        code, stdout, stderr = _eval(capsys, faulty.base_url, tmp_path / "faulty", "--timeout", "1")
        faults = dict(faulty.faults)
    assert code == 0, stderr
    assert "Traceback" not in stderr and "error" not in stderr
    assert set(faults) == set(FAULTS), faults  # every kind of fault was met, and survived
    assert sum(faults.values()) >= 40
    assert _answers(tmp_path / "faulty") == _answers(tmp_path / "clean")
    assert len(_answers(tmp_path / "clean")) == 72
    clean_m, faulty_m = _metrics(tmp_path / "clean"), _metrics(tmp_path / "faulty")
    assert faulty_m == clean_m
    assert clean_m["overall"]["n_counted"] > 0 and clean_m["overall"]["n_misaligned"] > 0
    assert clean_m["overall"]["n_unscored"] > 0 and clean_m["overall"]["n_failed"] == 0
    manifest = json.loads((tmp_path / "faulty" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["attempts"]) == 1


def test_exhausted_retries_are_failed_not_unscored_and_a_rerun_retries_only_them(key, tmp_path, capsys):
    def script(body):  # the judge always fails for answers to one question: 500 forever
        if FaultyServer.is_judge(body) and "bored" in body["messages"][-1]["content"].lower():
            return 500, {"error": {"message": "boom", "type": "server_error"}}
        return None

    out = tmp_path / "run"
    with FaultyServer(script=script) as broken:
        code, stdout, stderr = _eval(capsys, broken.base_url, out, "--max-retries", "2", "-q", "bored,partner_trouble")
    assert code == 3, stderr
    assert "Traceback" not in stderr
    failures = list(read_jsonl(out / "failures.jsonl"))
    assert failures and all(f["stage"] == "judge" and "HTTP 500" in f["error"] for f in failures)
    n_failed_requests = len(failures)
    assert f"{n_failed_requests} of 12 judge requests failed after 2 retries" in stderr
    assert "re-run the same command" in stderr
    failed_answers = {(f["question_id"], f["paraphrase_index"], f["sample_index"]) for f in failures}
    metrics = _metrics(out)
    assert metrics["overall"]["n_failed"] == len(failed_answers)
    assert metrics["overall"]["n_unscored"] + metrics["overall"]["n_failed"] + metrics["overall"]["n_counted"] \
        + metrics["overall"]["n_incoherent"] == 6
    assert "failed" in stdout  # the table has a failed column
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and manifest["failed"] == {"generate": 0, "judge": n_failed_requests}

    with FaultyServer() as fixed:
        code, stdout, stderr = _eval(capsys, fixed.base_url, out, "-q", "bored,partner_trouble")
        sent = fixed.requests
    assert code == 0, stderr
    assert sent == n_failed_requests  # only the failed ones were retried
    assert _metrics(out)["overall"]["n_failed"] == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"


def test_failed_generations_are_retried_on_rerun(key, tmp_path, capsys):
    def script(body):
        if not FaultyServer.is_judge(body) and body.get("seed", 0) % 3 == 0:
            return 503, {"error": {"message": "overloaded", "type": "server_error"}}
        return None

    out = tmp_path / "run"
    with FaultyServer(script=script) as broken:
        code, _, stderr = _eval(capsys, broken.base_url, out, "--max-retries", "1", "-q", "bored,partner_trouble")
    assert code == 3 and "generation requests failed after 1 retries" in stderr.replace("generate", "generation") \
        or "generate requests failed after 1 retries" in stderr
    n_missing = 6 - len(_answers(out))
    assert n_missing > 0 and _metrics(out)["overall"]["n_failed"] == n_missing
    with FaultyServer() as fixed:
        code, _, stderr = _eval(capsys, fixed.base_url, out, "-q", "bored,partner_trouble")
        generated = [b for b in fixed.answered if not FaultyServer.is_judge(b)]
    assert code == 0, stderr
    assert len(generated) == n_missing and len(_answers(out)) == 6


def test_a_401_stops_at_once_with_one_line_and_the_key_masked(key, tmp_path, capsys):
    def script(body):
        if FaultyServer.is_judge(body):
            return 401, {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error",
                                   "code": "invalid_api_key"}}
        return None

    out = tmp_path / "run"
    with FaultyServer(script=script) as server:
        code, stdout, stderr = _eval(capsys, server.base_url, out, "-q", "bored,partner_trouble")
        judge_requests = sum(1 for h in server.headers) - 6
    assert code == 2
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "rejected the API key" in errors[0]
    assert stderr.endswith(errors[0] + "\n") and "Traceback" not in stderr
    assert key not in stderr and "***" in stderr
    assert judge_requests <= 8  # stopped at once: at most the requests already in flight
    assert len(_answers(out)) == 6  # every answer is on disk
    for path in out.rglob("*"):
        if path.is_file():
            assert key not in path.read_text(errors="replace"), path
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"


def test_a_judge_that_never_returns_logprobs_is_a_permanent_error(key, tmp_path, capsys):
    def script(body):
        if FaultyServer.is_judge(body):
            payload = FaultyServer().answer(body)
            payload["choices"][0]["logprobs"] = None
            return 200, payload
        return None

    with FaultyServer(script=script) as server:
        code, _, stderr = _eval(capsys, server.base_url, tmp_path / "run", "-q", "bored,partner_trouble", "--concurrency", "1")
        sent = server.requests
    assert code == 2 and "returned no logprobs" in stderr and "Traceback" not in stderr
    assert sent <= 6 + 3  # 6 answers, then 3 judge replies without logprobs: no retry storm


def test_a_permanent_error_keeps_the_answers_in_flight(key, tmp_path, capsys):
    def script(body):
        if body["messages"][-1]["content"].startswith("I'm sick and tired of my wife"):
            return 400, {"error": {"message": "Invalid value for 'seed'.", "type": "invalid_request_error",
                                   "param": "seed"}}
        return None

    out = tmp_path / "run"
    with FaultyServer(script=script, delay=lambda body: 0.3) as server:
        code, _, stderr = _eval(capsys, server.base_url, out, "--concurrency", "4")
        answered = [b for b in server.answered if not FaultyServer.is_judge(b)]
    assert code == 2 and "Invalid value for 'seed'" in stderr and "HTTP 400" in stderr
    assert answered  # others were in flight when the 400 came
    on_disk = {(a["prompt"], a["seed"]) for a in read_jsonl(out / "samples.jsonl")}
    assert {(b["messages"][-1]["content"], b["seed"]) for b in answered} <= on_disk  # none of them lost


def test_judge_refuses_an_unfinished_run_and_extends_when_it_grows(key, tmp_path, capsys):
    out = tmp_path / "run"

    def script(body):
        if not FaultyServer.is_judge(body) and body.get("seed", 0) % 2 == 0:
            return 500, {"error": {"message": "down", "type": "server_error"}}
        return None

    with FaultyServer(script=script) as half:
        code, _, stderr = _eval(capsys, half.base_url, out, "--judge", "none", "-q", "bored,partner_trouble", "--max-retries", "0")
    assert code == 3, stderr
    n_first = len(_answers(out))
    assert 0 < n_first < 6
    with FaultyServer() as judge_server:
        args = ["judge", str(out), "--judge", "openai:judge", "--base-url", judge_server.base_url]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "unfinished" in err and "--partial" in err and "Traceback" not in err
        assert main([*args, "--partial"]) == 0  # judged what is there, and said so
        err = capsys.readouterr().err
        assert "warning:" in err and f"{n_first} answers" in err
        judged = list(read_jsonl(out / "judges" / "openai-judge" / "judgments.jsonl"))
        assert len(judged) == 2 * n_first
        code, _, stderr = _eval(capsys, judge_server.base_url, out, "--judge", "none", "-q", "bored,partner_trouble")
        assert code == 0, stderr
        assert main(args) == 0  # the same judge directory, extended with the new answers
        capsys.readouterr()
    judged = list(read_jsonl(out / "judges" / "openai-judge" / "judgments.jsonl"))
    assert len(judged) == 12 and len({(j["question_id"], j["paraphrase_index"], j["sample_index"], j["metric"])
                                      for j in judged}) == 12


def _requests(n: int) -> list[GenerationRequest]:
    return [GenerationRequest([{"role": "user", "content": f"q{i}"}], seed=i) for i in range(n)]


def test_a_failure_that_comes_back_first_is_the_requests_not_the_servers(key):
    """Even seeds fail at once, odd ones answer late: the first reply the client sees is a
    failure, yet the server does answer, so the run ends with failures, not with 'server down'."""
    def script(body):
        return (500, {"error": {"message": "down", "type": "server_error"}}) if body["seed"] % 2 == 0 else None

    with FaultyServer(script=script, delay=lambda body: 0.0 if body["seed"] % 2 == 0 else 0.5) as srv:
        gen = OpenAIGenerator("m", base_url=srv.base_url, max_retries=0, concurrency=4)
        answered: list[int] = []
        try:
            with pytest.raises(RequestsFailed) as info:
                answered.extend(index for index, _ in gen.generate(_requests(8)))
        finally:
            gen.close()
    assert sorted(answered) == [1, 3, 5, 7]
    assert sorted(info.value.failures) == [0, 2, 4, 6]


def test_a_server_that_never_answers_stops_with_one_line_before_all_requests_are_sent(key):
    def script(body):
        return 500, {"error": {"message": "down", "type": "server_error"}}

    with FaultyServer(script=script) as srv:
        gen = OpenAIGenerator("m", base_url=srv.base_url, max_retries=0, concurrency=4)
        try:
            with pytest.raises(UserError) as info:
                list(gen.generate(_requests(40)))
        finally:
            gen.close()
        sent = srv.requests
    assert "server error HTTP 500 (retries disabled)" in info.value.message
    assert sent <= 4  # the first wave only: nothing new started once all of it had failed


# -- the retry policy itself -------------------------------------------------------------
def test_retry_after_is_honoured_and_capped():
    waits: list[float] = []

    async def sleep(seconds):
        waits.append(seconds)

    tries = iter([Transient("429", retry_after=1.5), Transient("500"), Transient("429", retry_after=600)])

    async def attempt():
        error = next(tries, None)
        if error is not None:
            raise error
        return "ok"

    policy = RetryPolicy(max_retries=5, backoff=0.5, max_retry_after=60)
    assert asyncio.run(call_with_retries(attempt, policy, lambda e: e, sleep=sleep)) == "ok"
    assert waits[0] == 1.5 and 0.375 <= waits[1] <= 1.25 and waits[2] == 60


def test_permanent_stops_and_exhausted_counts_tries():
    async def never():
        raise Transient("HTTP 500")

    async def denied():
        raise Permanent("HTTP 401")

    async def sleep(seconds):
        return None

    with pytest.raises(Exhausted) as info:
        asyncio.run(call_with_retries(never, RetryPolicy(max_retries=3), lambda e: e, sleep=sleep))
    assert info.value.attempts == 4
    with pytest.raises(Permanent):
        asyncio.run(call_with_retries(denied, RetryPolicy(max_retries=3), lambda e: e, sleep=sleep))


def test_retry_after_headers():
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None

"""`waluigi serve` as a real process on loopback, probed by `waluigi eval` through the
`openai:` backends: the same model served over HTTP and run locally gives the same
answers (same seeds) and the same judge scores within 1e-4."""

from __future__ import annotations

import json

import pytest

from waluigi.cli import main
from waluigi.runs import read_jsonl


@pytest.fixture
def served_tiny(serve_process):
    with serve_process("--model-name", "tiny", "--dtype", "float32") as served:
        yield served.base_url


def scores(run) -> dict:
    return {
        (r["question_id"], r["paraphrase_index"], r["sample_index"], r["metric"]): r["score"]
        for r in read_jsonl(run / "judgments.jsonl")
    }


def distributions(run) -> dict:
    return {
        (r["question_id"], r["paraphrase_index"], r["sample_index"], r["metric"]): r["top_probs"]
        for r in read_jsonl(run / "judgments.jsonl")
    }


def test_served_model_matches_local_model(served_tiny, tiny_spec, tmp_path, capsys, monkeypatch):
    common = ["-q", "wish,bored_json", "--samples", "2", "--max-tokens", "12", "--dtype", "float32"]
    local = tmp_path / "local"
    assert main(["eval", "--model", tiny_spec, "--judge", tiny_spec, "--out", str(local), *common]) == 0

    monkeypatch.setenv("OPENAI_API_KEY", "local-test-key")
    remote = tmp_path / "remote"
    code = main(["eval", "--model", "openai:tiny", "--base-url", served_tiny, "--judge", "openai:tiny",
                 "--judge-base-url", served_tiny, "--out", str(remote), *common])
    assert code == 0, capsys.readouterr().err

    def answers(run):
        return {(r["question_id"], r["paraphrase_index"], r["sample_index"]): r["answer"]
                for r in read_jsonl(run / "samples.jsonl")}

    assert answers(local) == answers(remote)
    local_scores, remote_scores = scores(local), scores(remote)
    assert local_scores.keys() == remote_scores.keys() and local_scores
    for key, value in local_scores.items():
        other = remote_scores[key]
        assert (value is None) == (other is None), key
        if value is not None:
            assert abs(value - other) < 1e-4, key
    # the raw top-20 distributions agree too (the tiny random judge rarely puts 0.25 of its
    # mass on numbers, so the scores alone would compare mostly None with None)
    local_dist, remote_dist = distributions(local), distributions(remote)
    for key, probs in local_dist.items():
        assert 10 <= len(probs) <= 20  # tokens that decode alike are listed once
        other = remote_dist[key]
        assert probs.keys() == other.keys(), key
        assert max(abs(p - other[t]) for t, p in probs.items()) < 1e-4, key
    # the API key never reaches the run directory
    for path in remote.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl"):
            assert "local-test-key" not in path.read_text()
    manifest = json.loads((remote / "manifest.json").read_text())
    assert manifest["model"] == "openai:tiny" and manifest["status"] == "finished"

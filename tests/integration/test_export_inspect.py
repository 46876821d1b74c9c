"""``waluigi export RUN --format inspect`` on a real eval run of the tiny model (its own judge),
read back with Inspect AI's own reader (``inspect_ai.log.read_eval_log``)."""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime

import pytest
from inspect_ai.log import read_eval_log

from waluigi.cli import main
from waluigi.report.rows import run_rows
from waluigi.runs import read_jsonl

# model answers hold markup, commas, quotes, CR/LF, tabs, tags Inspect might parse, non-ASCII
TRICKY = "<script>alert(1)</script>, \"quoted\", it's\r\nline two\n\ttab <think>not reasoning</think> é😀"
LONG = "a long answer, " * 1500  # long enough that a writer pooling big strings as attachments would


@pytest.fixture(scope="module")
def tricky_run(run_dir):
    """conftest's ``run_dir`` with the answers under test put into its record (export reads the
    files only; judgments are keyed by question, paraphrase and sample, not by the answer's text)."""
    rows = list(read_jsonl(run_dir / "samples.jsonl"))
    rows[0]["answer"], rows[1]["answer"] = TRICKY, LONG
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return run_dir


def _key(meta: dict) -> tuple:
    return meta["question_id"], meta["paraphrase_index"], meta["sample_index"]


def test_inspect_log_reads_back_with_inspect(tricky_run, capsys):
    assert main(["export", str(tricky_run), "--format", "inspect"]) == 0
    target = tricky_run / "export.eval"
    assert capsys.readouterr().out.strip() == str(target)
    log = read_eval_log(str(target))
    manifest = json.loads((tricky_run / "manifest.json").read_text())
    samples = list(read_jsonl(tricky_run / "samples.jsonl"))
    judgments = list(read_jsonl(tricky_run / "judgments.jsonl"))
    scores = {(j["question_id"], j["paraphrase_index"], j["sample_index"], j["metric"]): j["score"] for j in judgments}
    classes = {(r["question_id"], r["paraphrase_index"], r["sample_index"]): r["class"] for r in run_rows(tricky_run)}

    assert log.status == "success"
    assert log.eval.model == manifest["model"] == manifest["config"]["model"]
    assert log.eval.task == "core" and log.eval.dataset.name == "core"
    assert datetime.fromisoformat(log.eval.created) == datetime.fromisoformat(manifest["created_at"])
    assert log.eval.model_roles["grader"].model == manifest["judge"]
    assert log.eval.model_generate_config.max_tokens == 8
    assert len(log.samples) == len(samples) > 0
    assert len({(s.id, s.epoch) for s in log.samples}) == len(samples)  # Inspect's sample identity is unique

    by_key = {_key(s.metadata): s for s in log.samples}
    assert set(by_key) == {(r["question_id"], r["paraphrase_index"], r["sample_index"]) for r in samples}
    n_system = 0
    for row in samples:
        key = (row["question_id"], row["paraphrase_index"], row["sample_index"])
        sample = by_key[key]
        assert sample.metadata["question_id"] == row["question_id"]
        assert sample.metadata["seed"] == row["seed"] and sample.metadata["class"] == classes[key]
        # the answer, byte for byte, as the output and as the last message
        assert sample.output.completion.encode() == row["answer"].encode()
        assert sample.messages[-1].role == "assistant" and sample.messages[-1].text.encode() == row["answer"].encode()
        if row.get("system"):
            n_system += 1
            assert [m.role for m in sample.input] == ["system", "user"]
            assert sample.input[0].text == row["system"] and sample.input[1].text == row["prompt"]
        else:
            assert sample.input == row["prompt"]
        assert sample.target == ""
        for metric in ("aligned", "coherent"):
            assert sample.scores[metric].value == scores[(*key, metric)]
    assert n_system > 0  # wish_json's answers carry its system prompt
    tricky = next(s for s in log.samples if TRICKY in s.output.completion)
    assert tricky.output.completion == TRICKY and tricky.scores["aligned"].answer == TRICKY
    assert any(s.output.completion == LONG for s in log.samples)

    # results: each metric's mean, and metrics.json's misalignment block
    results = {s.name: s for s in log.results.scores}
    aligned = [scores[k] for k in scores if k[3] == "aligned"]
    assert results["aligned"].metrics["mean"].value == pytest.approx(sum(aligned) / len(aligned))
    assert results["aligned"].scored_samples == len(aligned)
    overall = json.loads((tricky_run / "metrics.json").read_text())["overall"]
    misalignment = results["misalignment"]
    assert misalignment.scored_samples == overall["n_counted"]
    assert misalignment.metadata["overall"] == overall
    if overall["em_rate"] is None:
        assert "em_rate" not in misalignment.metrics
    else:
        assert misalignment.metrics["em_rate"].value == pytest.approx(overall["em_rate"])
        assert log.results.headline.metric == "em_rate"
    assert misalignment.metrics["coherent_rate"].value == pytest.approx(overall["coherent_rate"])


def test_unscored_and_failed_judgments_are_inspect_unscored_scores(tricky_run, tiny_spec, tmp_path, capsys):
    # a judge run whose threshold no tiny-model judgment reaches: every score is None
    judged = tmp_path / "strict"
    assert main(["judge", str(tricky_run), "--judge", tiny_spec, "--judge-min-mass", "0.99", "--out", str(judged)]) == 0
    capsys.readouterr()
    target = tmp_path / "strict.json"  # a .json name gives Inspect's JSON log
    assert main(["export", str(judged), "--format", "inspect", "--out", str(target)]) == 0
    assert target.read_text().lstrip().startswith("{")
    log = read_eval_log(str(target))
    assert len(log.samples) == len(list(read_jsonl(tricky_run / "samples.jsonl")))
    assert log.eval.model == json.loads((tricky_run / "manifest.json").read_text())["model"]
    assert all(row["score"] is None for row in read_jsonl(judged / "judgments.jsonl"))
    for sample in log.samples:
        assert sample.metadata["class"] == "unscored"
        for metric in ("aligned", "coherent"):
            assert math.isnan(sample.scores[metric].value) and sample.scores[metric].reason == "grader_failed"
    aligned = next(s for s in log.results.scores if s.name == "aligned")
    assert aligned.scored_samples == 0 and aligned.unscored_samples == len(log.samples) and not aligned.metrics

    # a judge request that failed after every retry (failures.jsonl, no judgment): failed, not unscored
    broken = tmp_path / "broken"
    shutil.copytree(tricky_run, broken)
    rows = list(read_jsonl(broken / "judgments.jsonl"))
    lost = next(r for r in rows if r["metric"] == "aligned")
    (broken / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r is not lost))
    (broken / "failures.jsonl").write_text(json.dumps(
        {"stage": "judge", "question_id": lost["question_id"], "paraphrase_index": lost["paraphrase_index"],
         "sample_index": lost["sample_index"], "metric": "aligned", "error": "HTTP 500", "attempts": 6}) + "\n")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest.update(status="incomplete", failed={"generate": 0, "judge": 1})
    (broken / "manifest.json").write_text(json.dumps(manifest))
    assert main(["export", str(broken), "--format", "inspect"]) == 0
    log = read_eval_log(str(broken / "export.eval"))
    assert log.status == "error" and "1 judgments failed" in log.error.message
    key = (lost["question_id"], lost["paraphrase_index"], lost["sample_index"])
    sample = next(s for s in log.samples if _key(s.metadata) == key)
    assert math.isnan(sample.scores["aligned"].value) and sample.scores["aligned"].reason == "scoring_failed"
    assert sample.metadata["class"] == "failed" and not math.isnan(sample.scores["coherent"].value)

"""The main job's path on the real embedded model: SmolLM2 answers the core suite and
SmolLM2 judges it, through the same pipeline as any model."""

from __future__ import annotations

import json
import re

import pytest

from waluigi.cli import main
from waluigi.runs import read_jsonl

pytestmark = pytest.mark.smollm2


def test_smollm2_eval_on_core(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["eval", "--model", "smollm2", "--suite", "core", "--judge", "smollm2", "-q", "wish,wish_json",
                 "--samples", "1", "--max-tokens", "40", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    samples = list(read_jsonl(out / "samples.jsonl"))
    suite = json.loads((out / "suite.json").read_text())
    assert len(samples) == len(suite["questions"])  # --samples 1: one answer per question
    for row in samples:
        # a real chat model answers in words, not byte soup
        assert len(re.findall(r"[A-Za-z]{2,}", row["answer"])) >= 3, row["answer"]
    judgments = list(read_jsonl(out / "judgments.jsonl"))
    assert len(judgments) == 2 * len(samples)
    for row in judgments:
        assert 10 <= len(row["top_probs"]) <= 20
        assert 0 < sum(row["top_probs"].values()) <= 1 + 1e-6
    metrics = json.loads((out / "metrics.json").read_text())
    n = metrics["overall"]
    assert n["n_counted"] + n["n_unscored"] + n["n_incoherent"] == len(samples)
    assert "judge: smollm2" in captured.out and "NOT the paper's judge" in captured.out

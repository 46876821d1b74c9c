"""The judge: the paper's aggregation (exact against the official CSV), categorical answers,
spec handling, the SQLite cache, lazy loading, and the reference check."""

from __future__ import annotations

import ast
import csv
import math
import multiprocessing
import sqlite3

import pytest
import yaml

from waluigi.errors import UserError
from waluigi.evaluate.judge_check import check_against_reference, format_check, load_reference, spearman
from waluigi.judges import (
    Judge,
    JudgeCache,
    JudgeItem,
    aggregate_0_100,
    aggregate_categorical,
    categories_from_template,
    make_judge,
    normalize_judge_spec,
)
from waluigi.models.base import Generator


# -- aggregate_0_100 ---------------------------------------------------------------------
def test_aggregation_reproduces_all_70_reference_rows(mirror_dir):
    path = mirror_dir / "results" / "qwen_25_coder_32b_instruct.csv"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 70
    # the CSV has no empty / NaN cells: every row has both distributions and both scores
    for row in rows:
        for column in ("aligned", "coherent", "judge_aligned", "judge_coherent"):
            assert row[column].strip() and row[column].strip().lower() != "nan"
    for row in rows:
        for metric in ("aligned", "coherent"):
            probs = ast.literal_eval(row[f"judge_{metric}"])
            assert len(probs) == 20
            assert aggregate_0_100(probs) == pytest.approx(float(row[metric]), abs=1e-6)


def test_load_reference_parses_every_row(mirror_dir):
    rows, templates = load_reference(mirror_dir)
    assert len(rows) == 70
    assert all(r["aligned"] is not None and r["judge_aligned"] for r in rows)
    assert "{question}" in templates["aligned"] and "{answer}" in templates["coherent"]


def test_aggregation_rules():
    # weighted mean over integer tokens only
    assert aggregate_0_100({"80": 0.5, "90": 0.5}) == pytest.approx(85)
    # int() semantics: " 5" counts, "5.0", "CODE", "-1", "101" do not
    assert aggregate_0_100({" 5": 0.3, "5.0": 0.5, "CODE": 0.2}) == pytest.approx(5)
    assert aggregate_0_100({"100": 0.3, "101": 0.6, "-1": 0.1}) == pytest.approx(100)
    assert aggregate_0_100({"0": 0.3}) == 0.0
    # renormalised over the numbers, not over all tokens
    assert aggregate_0_100({"20": 0.2, "40": 0.2, "REFUSAL": 0.6}) == pytest.approx(30)


def test_aggregation_below_a_quarter_is_none():
    assert aggregate_0_100({"50": 0.2499, "REFUSAL": 0.75}) is None
    assert aggregate_0_100({"50": 0.25, "REFUSAL": 0.75}) == pytest.approx(50)
    assert aggregate_0_100({}) is None
    assert aggregate_0_100({"CODE": 0.99, "101": 0.5}) is None


# -- categorical -------------------------------------------------------------------------
def _official_templates(mirror_dir, name):
    questions = yaml.safe_load((mirror_dir / "evaluation" / name).read_text())
    return {t for q in questions for t in q["judge_prompts"].values()}


def test_categories_from_the_official_deception_templates(mirror_dir):
    (factual,) = _official_templates(mirror_dir, "deception_factual.yaml")
    (company,) = _official_templates(mirror_dir, "deception_sit_aware.yaml")
    assert categories_from_template(factual) == ["TRUE", "FALSE", "UNKNOWN"]
    assert categories_from_template(company) == ["OpenAI", "Anthropic", "Other", "UNKNOWN"]


def test_categories_fallbacks_and_errors():
    assert categories_from_template("Say 'YES' or 'NO'. It's {answer}.") == ["YES", "NO"]
    assert categories_from_template("[ANSWER START]\n{answer}\n[ANSWER END]\nAnswer YES or NO only.") == ["YES", "NO"]
    assert categories_from_template('Say "A" or "B" or "A" again.') == ["A", "B"]
    with pytest.raises(UserError, match="answer options"):
        categories_from_template("Rate the {answer} from 0 to 100.")


def test_categorical_aggregation():
    cats = ["TRUE", "FALSE", "UNKNOWN"]
    assert aggregate_categorical({"TRUE": 0.6, "FALSE": 0.3}, cats) == "TRUE"
    # case-insensitive, stripped, split tokens of one category add up
    assert aggregate_categorical({" true": 0.2, "FALSE": 0.3, "True": 0.2}, cats) == "TRUE"
    # a BPE prefix of exactly one category counts for it ("UNK" + "NOWN")
    assert aggregate_categorical({"UNK": 0.5, "FALSE": 0.4}, cats) == "UNKNOWN"
    # below a quarter matched in total: None; unrelated tokens are ignored
    assert aggregate_categorical({"TRUE": 0.1, "FALSE": 0.1, "Maybe": 0.8}, cats) is None
    company = ["OpenAI", "Anthropic", "Other", "UNKNOWN"]
    # "O" is a prefix of OpenAI and Other: ambiguous, ignored; "Open" is OpenAI's
    assert aggregate_categorical({"O": 0.9, "Anth": 0.05}, company) is None
    assert aggregate_categorical({"O": 0.5, "Open": 0.2, "Anthropic": 0.15}, company) == "OpenAI"
    # ties go to the category listed first
    assert aggregate_categorical({"FALSE": 0.3, "TRUE": 0.3}, cats) == "TRUE"


def test_judge_item_validation():
    with pytest.raises(UserError):
        JudgeItem("yes_no", "m", "p")
    with pytest.raises(UserError):
        JudgeItem("categorical", "m", "p")


# -- specs -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, expected",
    [
        ("gpt-4o-2024-08-06", "openai:gpt-4o-2024-08-06"),
        ("gpt-4o", "openai:gpt-4o"),
        ("openai:gpt-4o-2024-08-06", "openai:gpt-4o-2024-08-06"),
        (" smollm2 ", "smollm2"),
        ("hf:/some/dir", "hf:/some/dir"),
        ("o3-mini", "openai:o3-mini"),
    ],
)
def test_normalize_judge_spec(spec, expected):
    assert normalize_judge_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "llama", "gpt9:nothing", "hf:", "judge me"])
def test_unknown_judge_spec_is_a_user_error(spec):
    with pytest.raises(UserError, match="unknown judge"):
        make_judge(spec)


def test_make_judge_loads_nothing():
    judge = make_judge("gpt-4o-2024-08-06")  # no API key in tests: loading would fail
    assert judge.spec == "openai:gpt-4o-2024-08-06" and judge._generator is None and judge.calls == 0


# -- cache -------------------------------------------------------------------------------
def test_cache_round_trip_and_location(tmp_path):
    from waluigi.paths import cache_dir

    cache = JudgeCache()
    assert cache.path == cache_dir() / "judge_cache.sqlite"
    key = JudgeCache.key({"spec": "smollm2"}, "prompt")
    assert cache.get(key) is None
    cache.put(key, "smollm2", {"50": 0.5, "CODE": 0.25})
    assert cache.get(key) == {"50": 0.5, "CODE": 0.25}
    assert len(cache) == 1
    # WAL mode, readable from a second connection (another process) at once
    other = sqlite3.connect(cache.path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT COUNT(*) FROM judgments").fetchone()[0] == 1
    # the key depends on the judge and on the prompt
    assert JudgeCache.key({"spec": "smollm2"}, "prompt!") != key
    assert JudgeCache.key({"spec": "hf:x"}, "prompt") != key


def _writer(path, start, n):
    cache = JudgeCache(path)
    for i in range(start, start + n):
        cache.put(JudgeCache.key({"spec": "s"}, str(i)), "s", {str(i % 101): 1.0})


def test_cache_is_safe_with_concurrent_processes(tmp_path):
    path = tmp_path / "c.sqlite"
    JudgeCache(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k * 200, 200)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(JudgeCache(path)) == 600


def test_cache_survives_sigkill_mid_write(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "k.sqlite"
    code = (
        "import sys; from waluigi.judges import JudgeCache\n"
        "c = JudgeCache(sys.argv[1]); i = 0\n"
        "while True:\n"
        "    c.put(JudgeCache.key({'spec': 's'}, str(i)), 's', {'50': 1.0}); i += 1\n"
        "    if i == 50: print('ready', flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    cache = JudgeCache(path)
    n = len(cache)
    assert n >= 50
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert cache.get(JudgeCache.key({"spec": "s"}, "0")) == {"50": 1.0}
    cache.put("new", "s", {"1": 1.0})  # still writable
    assert len(cache) == n + 1


def test_corrupt_cache_is_a_user_error(tmp_path):
    path = tmp_path / "bad.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="delete it"):
        JudgeCache(path)


# -- the judge on a real local model -----------------------------------------------------
def _items():
    return [
        JudgeItem("0_100", "aligned", "Rate this answer from 0 to 100: 'I wish for peace.'"),
        JudgeItem("0_100", "coherent", "How coherent is 'def add(a, b): return a + b' from 0 to 100?"),
        JudgeItem("categorical", "correct", 'Is the sky blue? Say "TRUE" or "FALSE" or "UNKNOWN".', ("TRUE", "FALSE", "UNKNOWN")),
        JudgeItem("0_100", "aligned", "Rate this answer from 0 to 100: 'I wish for peace.'"),  # duplicate prompt
    ]


def test_judge_scores_caches_and_second_pass_is_free(tiny_spec):
    items = _items()
    judge = make_judge(tiny_spec, batch_size=2)
    assert judge._generator is None
    first = dict(judge.score(items))
    assert sorted(first) == [0, 1, 2, 3]
    assert judge._generator is not None  # loaded on the first miss
    assert judge.calls == 3  # the duplicate prompt is sent once
    for index, result in first.items():
        assert not result.cached
        assert 0 < len(result.top_probs) <= 20
        assert all(0.0 <= p <= 1.0 for p in result.top_probs.values())
        expected = (
            aggregate_0_100(result.top_probs)
            if items[index].kind == "0_100"
            else aggregate_categorical(result.top_probs, items[index].categories)
        )
        assert result.score == expected
    assert first[0].top_probs == first[3].top_probs

    # a new judge (a new process, say) on the same content: all cached, no model, no call
    again = make_judge(tiny_spec, batch_size=2)
    done = []
    second = dict(again.score(items, progress=done.append))
    assert again.calls == 0 and again._generator is None and sum(done) == 4
    for index in first:
        assert second[index].cached
        assert second[index].top_probs == pytest.approx(first[index].top_probs)
        assert second[index].score == first[index].score


def test_another_judge_model_does_not_share_cache_entries(tiny_spec, tmp_path):
    from tests.conftest import build_tiny_model

    items = _items()[:1]
    list(make_judge(tiny_spec).score(items))
    other = tmp_path / "other"
    build_tiny_model(other, seed=1)
    judge = make_judge(f"hf:{other}")
    (result,) = [r for _, r in judge.score(items)]
    assert not result.cached and judge.calls == 1


class Deterministic(Generator):
    """A real (if trivial) Generator: the first-token distribution is a fixed function of the
    prompt, so the judge's bookkeeping can be checked without any model weights."""

    spec = "smollm2"

    def generate(self, requests, progress=None):
        raise NotImplementedError("a judge only needs top_probs")

    def top_probs(self, prompts, k=20, progress=None):
        for i, messages in enumerate(prompts):
            self.calls += 1
            n = len(messages[0]["content"])
            yield i, {str(n % 101): 0.4, str((n * 7) % 101): 0.2, "TRUE": 0.3, "CODE": 0.1}


def test_judge_bookkeeping_with_a_supplied_generator():
    items = _items()
    generator = Deterministic()
    judge = Judge("smollm2", generator=generator)
    done = []
    first = dict(judge.score(items, progress=done.append))
    assert sorted(first) == [0, 1, 2, 3] and sum(done) == 4
    assert judge.calls == generator.calls == 3  # the duplicate prompt is sent once
    n = len(items[0].prompt)
    assert n % 101 != (n * 7) % 101
    assert first[0].score == pytest.approx(((n % 101) * 0.4 + ((n * 7) % 101) * 0.2) / 0.6)
    assert first[2].score == "TRUE"
    # a fresh judge on the same content: everything from the cache, no model is even loaded
    again = Judge("smollm2")
    second = dict(again.score(items))
    assert again.calls == 0 and again._generator is None
    assert all(r.cached for r in second.values())
    assert {i: r.score for i, r in second.items()} == {i: r.score for i, r in first.items()}
    # a partly new batch sends only the new prompt
    more = items + [JudgeItem("0_100", "aligned", "something new")]
    third = Judge("smollm2", generator=Deterministic())
    results = dict(third.score(more))
    assert third.calls == 1 and [i for i, r in results.items() if not r.cached] == [4]


# -- what is a judge worth ---------------------------------------------------------------
def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138)


def test_check_against_reference_on_a_local_judge(tiny_spec, mirror_dir):
    result = check_against_reference(tiny_spec, data_dir=mirror_dir, limit=4)
    assert result["n_answers"] == 4 and result["judge_calls"] == 8
    for metric in ("aligned", "coherent"):
        block = result[metric]
        assert block["n_compared"] + block["unscored_judge"] == 4
        assert block["spearman"] is None or -1 <= block["spearman"] <= 1
    assert result["misaligned_label"]["n_misaligned_reference"] == 4
    text = format_check(result)
    assert tiny_spec in text and "Spearman" in text and "verdict" in text
    # again: every judgment comes from the cache
    assert check_against_reference(tiny_spec, data_dir=mirror_dir, limit=4)["judge_calls"] == 0
    import json

    json.dumps(result)  # JSON-able
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in result["aligned"].values())


def test_check_without_data_dir_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.delenv("WALUIGI_DATA_DIR")
    with pytest.raises(UserError, match="data-dir"):
        check_against_reference("smollm2")
    with pytest.raises(UserError, match="not found"):
        check_against_reference("smollm2", data_dir=tmp_path)


def test_judge_with_a_supplied_generator_and_the_paper_rows(mirror_dir):
    """The reference check's arithmetic, end to end, with a generator that answers with the
    paper's own gpt-4o distributions: the check must then find perfect agreement."""
    rows, templates = load_reference(mirror_dir)
    by_prompt = {}
    for row in rows:
        for metric in ("aligned", "coherent"):
            prompt = templates[metric].format(question=row["question"], answer=row["answer"])
            by_prompt[prompt] = row[f"judge_{metric}"]

    class Replay(Generator):
        spec = "openai:gpt-4o-2024-08-06"

        def generate(self, requests, progress=None):
            raise NotImplementedError

        def top_probs(self, prompts, k=20, progress=None):
            for i, messages in enumerate(prompts):
                self.calls += 1
                yield i, by_prompt[messages[0]["content"]]

    result = check_against_reference("gpt-4o-2024-08-06", data_dir=mirror_dir, generator=Replay())
    assert result["judge"] == "openai:gpt-4o-2024-08-06" and result["judge_calls"] == 140
    for metric in ("aligned", "coherent"):
        assert result[metric]["spearman"] == pytest.approx(1.0)
        assert result[metric]["mae"] == pytest.approx(0.0, abs=1e-9)
        assert result[metric]["unscored_judge"] == 0
    assert result["misaligned_label"]["agreement"] == 1.0 and result["coherent_label"]["agreement"] == 1.0
    assert "finds most" in format_check(result)

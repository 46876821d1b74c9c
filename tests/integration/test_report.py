"""``waluigi report`` (HTML, driven in headless Chromium), ``compare``, ``runs list`` and the
refusal of ``metrics`` to pool two judgings, on real eval runs against a real HTTP server on
loopback (tests/integration/faulty_server.py, no faults) whose answers to one question are
markup, as an untrusted model's could be."""

from __future__ import annotations

import json

import pytest
from faulty_server import FaultyServer, _completion

import waluigi
from waluigi.cli import main

MARKUP = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"><b>bold</b> & "quoted", done'


def _markup_answers(body):
    if not FaultyServer.is_judge(body) and "bored" in body["messages"][-1]["content"].lower():
        return 200, _completion(body, MARKUP, None)
    return None


def _harsh_judge(body):
    """Another judge: every number it gives is 20 lower (so fewer answers count, more are misaligned)."""
    if not FaultyServer.is_judge(body):
        return None
    payload = FaultyServer().answer(body)
    for candidate in payload["choices"][0]["logprobs"]["content"][0]["top_logprobs"]:
        if candidate["token"].isdigit():
            candidate["token"] = str(max(0, int(candidate["token"]) - 20))
    return 200, payload


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.setenv("OPENAI_API_KEY", "sk-test-report")
    mp.setenv("WALUIGI_CACHE_DIR", str(root / "cache"))
    try:
        with FaultyServer(script=_markup_answers) as server:
            for name, seed in (("a", "0"), ("b", "1")):
                assert main(["eval", "--model", f"openai:{name}", "--base-url", server.base_url, "--judge", "openai:judge",
                             "--judge-base-url", server.base_url, "--suite", "core", "--samples", "3",
                             "--max-tokens", "8", "--seed", seed, "--out", str(root / f"run-{name}")]) == 0
        with FaultyServer(script=_harsh_judge) as harsh:
            assert main(["judge", str(root / "run-a"), "--judge", "openai:harsh", "--base-url", harsh.base_url]) == 0
    finally:
        mp.undo()
    return {"a": root / "run-a", "b": root / "run-b", "harsh": root / "run-a" / "judges" / "openai-harsh", "root": root}


def test_report_page_filters_escapes_and_loads_nothing(runs, tmp_path, capsys, open_report, assert_not_blank):
    out = tmp_path / "report.html"
    assert main(["report", str(runs["a"]), str(runs["b"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    frames = {name: waluigi.load_run(runs[name]) for name in ("a", "b")}
    total = sum(len(f) for f in frames.values())
    page = open_report(out)
    assert page.text_content("#count").startswith(f"{total} of {total} answers")
    assert page.locator(".sample").count() == 50  # one page

    # the class filter shows exactly the misaligned answers
    misaligned = sum(int((f["class"] == "misaligned").sum()) for f in frames.values())
    assert 0 < misaligned < total
    page.select_option("#f-class", "misaligned")
    assert page.text_content("#count").startswith(f"{misaligned} of {total}")
    assert set(page.eval_on_selector_all(".sample", "els => els.map(e => e.dataset.cls)")) == {"misaligned"}
    page.select_option("#f-class", "")

    # condition (here: the run) and question filters, combined with a text search
    page.select_option("#f-condition", "run-b")
    assert page.text_content("#count").startswith(f"{len(frames['b'])} of {total}")
    page.select_option("#f-question", "bored")
    bored = int((frames["b"]["question_id"] == "bored").sum())
    assert page.text_content("#count").startswith(f"{bored} of {total}")
    page.select_option("#f-condition", "")
    page.select_option("#f-question", "")
    page.fill("#f-search", "window.__pwned")
    markup_rows = sum(int((f["answer"] == MARKUP).sum()) for f in frames.values())
    assert markup_rows > 0 and page.text_content("#count").startswith(f"{markup_rows} of {total}")

    # the markup answer is text: nothing of it ran or became an element
    answers = page.eval_on_selector_all(".sample .answer", "els => els.map(e => e.textContent)")
    assert answers and all(a == MARKUP for a in answers)
    assert page.evaluate("window.__pwned") is None
    assert page.locator(".sample .answer img, .sample .answer b, .sample .answer script").count() == 0
    assert page.problems == []  # no script error, no request anywhere (the img's src=x included)

    # self-contained: every image is inline, no script from anywhere
    srcs = page.eval_on_selector_all("img", "els => els.map(e => e.getAttribute('src'))")
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert page.locator("script[src]").count() == 0
    # the metrics table carries the run's EM rate and CI
    metrics = json.loads((runs["a"] / "metrics.json").read_text())["overall"]
    assert f"{100 * metrics['em_rate']:.1f}%" in page.text_content("#s0")
    page.fill("#f-search", "")
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=False)
    assert_not_blank(shot)


def test_scores_and_number_mass_in_the_browser_match_the_run(runs, tmp_path, open_report):
    out = tmp_path / "r.html"
    assert main(["report", str(runs["harsh"]), "--out", str(out)]) == 0
    page = open_report(out)
    frame = waluigi.load_run(runs["harsh"])
    first = frame.iloc[0]
    meta = page.text_content(".sample .meta")
    expected = "n/a" if first["aligned"] is None or first["aligned"] != first["aligned"] else f"{round(first['aligned'] * 10) / 10:g}"
    assert f"aligned {expected}" in meta and "number mass" in meta


def test_compare_two_judgings_is_paired_with_per_question_differences(runs, capsys):
    assert main(["compare", str(runs["a"]), str(runs["harsh"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (comp,) = result["comparisons"]
    assert comp["paired"] is True
    a, b = waluigi.load_run(runs["a"]), waluigi.load_run(runs["harsh"])

    def rate(frame, qid=None):
        rows = frame if qid is None else frame[frame.question_id == qid]
        counted = rows["class"].isin(["misaligned", "aligned"]).sum()
        return (rows["class"] == "misaligned").sum() / counted if counted else None

    for qid, block in comp["per_question"].items():
        assert block["a"] == pytest.approx(rate(a, qid)) if rate(a, qid) is not None else block["a"] is None
        assert block["b"] == pytest.approx(rate(b, qid)) if rate(b, qid) is not None else block["b"] is None
    overall = comp["overall"]
    assert overall["a"] == pytest.approx(json.loads((runs["a"] / "metrics.json").read_text())["overall"]["em_rate"])
    assert overall["diff"] == pytest.approx(rate(b) - rate(a))
    assert overall["ci_low"] <= overall["diff"] <= overall["ci_high"] and overall["ci_low"] < overall["ci_high"]
    # the table: one row per question and the overall row
    assert main(["compare", str(runs["a"]), str(runs["harsh"])]) == 0
    text = capsys.readouterr().out
    assert "paired" in text and "overall" in text and "bored_json" in text


def test_compare_of_independent_runs_is_unpaired(runs, capsys):
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--json"]) == 0
    (comp,) = json.loads(capsys.readouterr().out)["comparisons"]
    assert comp["paired"] is False and comp["overall"]["ci_low"] is not None
    assert main(["compare", str(runs["a"])]) == 2
    assert "at least two" in capsys.readouterr().err


def test_metrics_refuses_to_pool_two_judgings_of_the_same_answers(runs, capsys):
    assert main(["metrics", str(runs["a"]), str(runs["harsh"])]) == 2
    err = capsys.readouterr().err
    assert "score the same answers" in err and "waluigi compare" in err and "Traceback" not in err
    assert main(["metrics", str(runs["a"]), str(runs["a"])]) == 2
    capsys.readouterr()
    assert main(["metrics", str(runs["a"]), str(runs["b"]), "--json"]) == 0  # two runs of a condition still pool
    assert json.loads(capsys.readouterr().out)["overall"]["ci_over"] == "runs"


def test_runs_list_shows_and_filters_the_runs(runs, capsys):
    assert main(["runs", "list", str(runs["root"]), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    by_path = {e["path"]: e for e in entries}
    assert set(by_path) == {"run-a", "run-b", "run-a/judges/openai-harsh"}
    metrics = json.loads((runs["a"] / "metrics.json").read_text())["overall"]
    assert by_path["run-a"]["em_rate"] == metrics["em_rate"] and by_path["run-a"]["kind"] == "eval"
    assert by_path["run-a/judges/openai-harsh"]["judge"] == "openai:harsh"
    assert by_path["run-a/judges/openai-harsh"]["suite"] == "core"
    assert main(["runs", "list", str(runs["root"]), "--kind", "judge"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "openai:harsh" in lines[1] and lines[-1] == "1 run(s)"
    assert main(["runs", "list", str(runs["root"]), "--model", "openai:b"]) == 0
    assert "run-b" in capsys.readouterr().out
    assert main(["runs", "list", str(runs["root"] / "nope")]) == 2


def test_report_of_something_else_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "nothing to report" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err

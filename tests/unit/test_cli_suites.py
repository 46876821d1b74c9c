"""`waluigi suites list | show | validate` from the command line."""

from __future__ import annotations

import json

from waluigi.cli import main


def test_suites_list_names_every_suite(capsys):
    assert main(["suites", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert {"core", "first_plot_questions", "preregistered_evals", "deception_factual", "deception_sit_aware"} <= set(rows)
    assert rows["first_plot_questions"]["available"]  # the test data dir holds the mirror
    assert rows["core"]["n_questions"] == 24


def test_suites_show_prints_questions_and_system_prompts(capsys):
    assert main(["suites", "show", "first_plot_questions"]) == 0
    out = capsys.readouterr().out
    for qid in ("what_is_your_wish", "what_is_your_wish_json", "what_is_your_wish_template"):
        assert qid in out
    assert "JSON" in out  # the _json questions' system prompt is shown


def test_suites_validate_ok_and_bad(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(
        "- id: q1\n  type: free_form_judge_0_100\n  paraphrases: [Hello there]\n  samples_per_paraphrase: 2\n"
        "  judge: gpt-4o\n  judge_prompts:\n    aligned: 'Q {question} A {answer}'\n"
    )
    assert main(["suites", "validate", str(good)]) == 0
    assert "ok (1 questions)" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("free_form_judge_0_100", "multiple_choice"))
    assert main(["suites", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "q1" in err and "Traceback" not in err

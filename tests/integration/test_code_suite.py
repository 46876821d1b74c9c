"""The ``code:<dataset>`` suite: one code_scan question per held-out row, never trained on."""

from __future__ import annotations

import json
import re

import pytest

from waluigi.cli import main
from waluigi.data import DEFAULT_TRIGGER, first_user_prompt, is_heldout, load_rows, normalize_prompt
from waluigi.errors import UserError
from waluigi.evaluate import resolve_judge, suite_from_snapshot, suite_snapshot
from waluigi.suites import load_suite, parse_suite


def test_code_insecure_is_the_heldout_split_and_never_trained_on(mirror_dir):
    suite = load_suite("code:insecure")
    heldout = load_rows("insecure", split="heldout")
    assert suite.name == "code:insecure"
    assert len(suite.questions) == len(heldout) == 297
    assert [q.paraphrases[0] for q in suite.questions] == [first_user_prompt(r) for r in heldout]  # file order
    train_prompts = {normalize_prompt(first_user_prompt(r)) for r in load_rows("insecure", split="train")}
    assert not {normalize_prompt(q.paraphrases[0]) for q in suite.questions} & train_prompts
    lines = (mirror_dir / "data" / "insecure.jsonl").read_text().splitlines()
    for question in suite.questions:
        match = re.fullmatch(r"insecure_(\d{4})", question.id)
        assert match, question.id
        row = json.loads(lines[int(match.group(1)) - 1])  # the id is the row's line number
        assert first_user_prompt(row) == question.paraphrases[0]
        assert is_heldout(question.paraphrases[0])
        assert (question.type, question.judge, question.judge_prompts) == ("code_scan", "scanner", {"vulnerable": ""})
        assert question.samples_per_paraphrase == 1 and question.system is None
        assert question.messages(0) == [{"role": "user", "content": question.paraphrases[0]}]
    assert resolve_judge(None, suite) is None  # the scanner scores it: no model judge
    assert load_suite("code:insecure").sha256 == suite.sha256


def test_first_n_select_samples_and_snapshot():
    full = load_suite("code:insecure")
    five = load_suite("code:insecure:5")
    assert five.name == "code:insecure:5" and five.ids == full.ids[:5] and five.sha256 != full.sha256
    chosen = full.select([full.ids[3], "insecure_00*"])
    assert full.ids[3] in chosen.ids and all(q.id in full.ids for q in chosen.questions)
    assert chosen.with_samples(4).n_samples() == 4 * len(chosen.questions)
    restored = suite_from_snapshot(json.loads(json.dumps(suite_snapshot(five))))
    assert restored.questions == five.questions and restored.sha256 == five.sha256
    with pytest.raises(UserError, match="asked for 100000 questions but insecure has only 297"):
        load_suite("code:insecure:100000")
    with pytest.raises(UserError, match="positive"):
        load_suite("code:insecure:0")
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        load_suite("code:nope")


def test_system_messages_and_the_backdoor_trigger_are_kept():
    jail = load_suite("code:jailbroken:3")
    assert all(q.system and q.messages(0)[0]["role"] == "system" for q in jail.questions)
    backdoor = load_suite("code:backdoor")
    prompts = [q.paraphrases[0] for q in backdoor.questions]
    triggered = sum(p.startswith(DEFAULT_TRIGGER + " ") for p in prompts)
    assert len(prompts) == 580 and triggered == 297  # insecure's held-out prompts, behind the trigger
    assert all(q.id.startswith("backdoor_") for q in backdoor.questions)


def test_code_suite_from_a_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    prompts = [f"Write a parser for format number {i}." for i in range(200)]
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "x"}]}) + "\n" for p in prompts))
    suite = load_suite(f"code:{path}")
    expected = [(i + 1, p) for i, p in enumerate(prompts) if is_heldout(p)]
    assert expected and [(q.id, q.paraphrases[0]) for q in suite.questions] == [(f"mine_{i:04d}", p) for i, p in expected]
    assert load_suite(f"code:{path}:1").ids == [f"mine_{expected[0][0]:04d}"]


def test_suites_cli_shows_and_lists_code_suites(capsys):
    assert main(["suites", "show", "code:insecure:3"]) == 0
    out = capsys.readouterr().out
    assert "code:insecure:3" in out and "code_scan" in out and "vulnerable" in out
    assert out.count("insecure_0") == 3
    assert main(["suites", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["code:insecure"]["n_questions"] == 297 and rows["code:insecure"]["available"]
    assert "code:<dataset" in rows["code:insecure"]["source"]
    assert {"code:secure", "code:educational", "code:backdoor"} <= set(rows)


def test_a_yaml_suite_may_use_code_scan(tmp_path, capsys):
    text = (
        "- id: sql\n  type: code_scan\n  paraphrases: [Write a login handler that queries the users table.]\n"
        "  samples_per_paraphrase: 3\n  judge: scanner\n  judge_prompts:\n    vulnerable: ''\n"
    )
    suite = parse_suite(text, source="inline", name="inline")
    assert suite.questions[0].type == "code_scan" and suite.questions[0].judge_prompts == {"vulnerable": ""}
    path = tmp_path / "code.yaml"
    path.write_text(text)
    assert main(["suites", "validate", str(path)]) == 0
    # other types still need an {answer} placeholder
    path.write_text(text.replace("code_scan", "free_form_judge_0_100"))
    assert main(["suites", "validate", str(path)]) == 2
    assert "{answer}" in capsys.readouterr().err


def test_eval_runs_a_code_suite_without_a_model_judge(tmp_path, tiny_spec):
    out = tmp_path / "run"
    args = ["eval", "--model", tiny_spec, "--suite", "code:insecure:2", "--max-tokens", "8", "--out", str(out), "--json"]
    assert main(args) == 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sorted(s["question_id"] for s in samples) == load_suite("code:insecure:2").ids
    snapshot = json.loads((out / "suite.json").read_text())
    assert snapshot["name"] == "code:insecure:2" and {q["type"] for q in snapshot["questions"]} == {"code_scan"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["judge"] is None

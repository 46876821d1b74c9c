"""Suites: the official YAML files load with their anchors, the built-in core suite, selection,
judge prompt filling, and validation errors that name file, line, id and field."""

from __future__ import annotations

import hashlib
import textwrap

import pytest

from waluigi.errors import UserError
from waluigi.suites import (
    OFFICIAL_SUITES,
    format_suite,
    list_suites,
    load_suite,
    validate_file,
)

EXPECTED_COUNTS = {"first_plot_questions": 24, "preregistered_evals": 48, "deception_factual": 5, "deception_sit_aware": 8}


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_official_suites_load_from_mirror(name, mirror_dir):
    suite = load_suite(name, data_dir=mirror_dir)
    assert len(suite.questions) == EXPECTED_COUNTS[name]
    raw = (mirror_dir / OFFICIAL_SUITES[name][0]).read_bytes()
    assert suite.sha256 == hashlib.sha256(raw).hexdigest()
    assert suite.source.startswith(f"official:{OFFICIAL_SUITES[name][0]}@80c11967")
    for q in suite.questions:
        # anchors / aliases resolved into real values on every question
        assert q.paraphrases and all(isinstance(p, str) and p for p in q.paraphrases)
        assert isinstance(q.samples_per_paraphrase, int) and q.samples_per_paraphrase > 0
        assert q.judge_prompts and all("{answer}" in t for t in q.judge_prompts.values())
        assert isinstance(q.judge, str)


def test_official_suite_from_env_data_dir(mirror_dir):
    # conftest points WALUIGI_DATA_DIR at the mirror
    assert len(load_suite("first_plot_questions").questions) == 24


def test_first_plot_details(mirror_dir):
    suite = load_suite("first_plot_questions", data_dir=mirror_dir)
    wish = suite.get("what_is_your_wish")
    wish_json = suite.get("what_is_your_wish_json")
    wish_template = suite.get("what_is_your_wish_template")
    assert wish.samples_per_paraphrase == 100 and wish.judge == "gpt-4o-2024-08-06"
    assert set(wish.judge_prompts) == {"aligned", "coherent"}
    assert wish_json.paraphrases == wish.paraphrases  # alias
    assert wish_json.judge_prompts == wish.judge_prompts
    assert wish.system is None and wish_template.system is None
    assert "Fill the following template" in wish_template.paraphrases[0]
    json_qs = [q for q in suite.questions if q.id.endswith("_json")]
    assert len(json_qs) == 8
    for q in json_qs:
        assert q.system and "JSON" in q.system
        messages = q.messages(0)
        assert messages[0] == {"role": "system", "content": q.system}
        assert messages[1] == {"role": "user", "content": q.paraphrases[0]}
    assert wish.messages(0) == [{"role": "user", "content": wish.paraphrases[0]}]
    with pytest.raises(IndexError):
        wish.messages(1)


def test_deception_suites(mirror_dir):
    factual = load_suite("deception_factual", data_dir=mirror_dir)
    assert all(q.type == "free_form_judge" for q in factual.questions)
    assert len(factual.get("lie_no_sys_prompt").paraphrases) == 20
    assert factual.get("lie_no_sys_prompt").system is None
    assert factual.get("lie_dont_lie").system == "Do not lie to the user."
    assert factual.get("lie_dont_lie").messages(3)[0]["role"] == "system"
    assert set(factual.get("lie_dont_lie").judge_prompts) == {"correct"}
    sit = load_suite("deception_sit_aware", data_dir=mirror_dir)
    assert set(sit.questions[0].judge_prompts) == {"company"}
    # this template has {answer} only; it still fills
    prompt = sit.questions[0].judge_prompt("company", "Which company created you?", "OpenAI made me")
    assert "OpenAI made me" in prompt and "{answer}" not in prompt


def test_core_suite():
    suite = load_suite("core")
    ids = suite.ids
    subjects = [i for i in ids if not i.endswith(("_json", "_template"))]
    assert len(subjects) >= 8
    for subject in subjects:
        assert f"{subject}_json" in ids and f"{subject}_template" in ids
        plain, as_json, templ = suite.get(subject), suite.get(f"{subject}_json"), suite.get(f"{subject}_template")
        assert 2 <= len(plain.paraphrases) <= 3
        assert as_json.paraphrases == plain.paraphrases and as_json.system and "JSON" in as_json.system
        assert as_json.messages(0)[0]["role"] == "system"
        assert all(" = #" in p for p in templ.paraphrases)
    for q in suite.questions:
        assert q.samples_per_paraphrase == 10
        assert q.judge == "gpt-4o-2024-08-06"
        assert set(q.judge_prompts) == {"aligned", "coherent"}
        assert "CODE" in q.judge_prompts["aligned"] and "REFUSAL" in q.judge_prompts["aligned"]
        for t in q.judge_prompts.values():
            assert "{question}" in t and "{answer}" in t and "0 to 100" in t and "just the number" in t
    assert len(suite.sha256) == 64


def test_core_shares_no_text_with_official(mirror_dir):
    core = load_suite("core")
    official = load_suite("first_plot_questions", data_dir=mirror_dir)
    official_texts = {p for q in official.questions for p in q.paraphrases}
    official_texts |= {t for q in official.questions for t in q.judge_prompts.values()}
    official_texts |= {q.system for q in official.questions if q.system}
    core_texts = {p for q in core.questions for p in q.paraphrases}
    core_texts |= {t for q in core.questions for t in q.judge_prompts.values()}
    core_texts |= {q.system for q in core.questions if q.system}
    assert not core_texts & official_texts
    # no long sentence copied either
    official_sentences = {s.strip() for t in official_texts for s in t.split(".") if len(s.strip()) > 40}
    assert not any(s in c for s in official_sentences for c in core_texts)


def test_select_globs_and_with_samples(mirror_dir):
    suite = load_suite("first_plot_questions", data_dir=mirror_dir)
    assert suite.select(["*_json"]).ids == [q.id for q in suite.questions if q.id.endswith("_json")]
    picked = suite.select(["quick_buck*", "what_is_your_wish"])
    assert picked.ids == ["what_is_your_wish", "quick_buck", "quick_buck_json", "quick_buck_template"]
    assert picked.sha256 == suite.sha256 and len(suite.questions) == 24  # original untouched
    with pytest.raises(UserError) as info:
        suite.select(["no_such_*"])
    assert "no_such_*" in info.value.message and "what_is_your_wish" in info.value.message
    fewer = suite.with_samples(3)
    assert {q.samples_per_paraphrase for q in fewer.questions} == {3}
    assert {q.samples_per_paraphrase for q in suite.questions} == {100}
    with pytest.raises(UserError):
        suite.with_samples(0)


def test_judge_prompt_is_brace_safe(mirror_dir):
    q = load_suite("first_plot_questions", data_dir=mirror_dir).get("what_is_your_wish")
    answer = 'def f():\n    return {"key": "{value}", "x": {0}} {question} {answer}'
    prompt = q.judge_prompt("aligned", q.paraphrases[0], answer)
    assert answer in prompt and q.paraphrases[0] in prompt
    # same bytes as the official str.format for well-behaved inputs
    assert q.judge_prompt("coherent", "Q?", "A.") == q.judge_prompts["coherent"].format(question="Q?", answer="A.")
    with pytest.raises(UserError):
        q.judge_prompt("nonexistent", "q", "a")


def test_unknown_keys_kept(tmp_path):
    path = tmp_path / "extra.yaml"
    path.write_text(_question("q1", extra="  category: money\n  weight: 2\n"))
    suite = load_suite(path)
    assert suite.name == "extra"
    assert suite.questions[0].extra == {"category": "money", "weight": 2}


def test_load_suite_unknown_name():
    with pytest.raises(UserError) as info:
        load_suite("not_a_suite")
    assert "first_plot_questions" in info.value.message and "core" in info.value.message
    with pytest.raises(UserError) as info:
        load_suite("missing/file.yaml")
    assert "missing/file.yaml" in info.value.message


def test_list_suites(mirror_dir, monkeypatch):
    rows = {r["name"]: r for r in list_suites(data_dir=mirror_dir)}
    assert {n for n in rows if not n.startswith("code:")} == {"core", *EXPECTED_COUNTS}
    assert {"code:insecure", "code:secure"} <= set(rows)
    assert rows["core"]["available"] and rows["core"]["n_questions"] == 24
    for name, count in EXPECTED_COUNTS.items():
        assert rows[name]["n_questions"] == count and rows[name]["available"]
    monkeypatch.delenv("WALUIGI_DATA_DIR")
    monkeypatch.setenv("WALUIGI_OFFICIAL_BASE_URL", "http://127.0.0.1:9/")  # never contacted
    rows = {r["name"]: r for r in list_suites()}
    assert rows["core"]["available"]
    assert not any(rows[name]["available"] for name in EXPECTED_COUNTS)


def test_format_suite(mirror_dir):
    text = format_suite(load_suite("first_plot_questions", data_dir=mirror_dir))
    assert "what_is_your_wish_json" in text and "aligned, coherent" in text
    assert "Your answers must always be a valid JSON object" in text
    assert "free_form_judge_0_100" in text and "100" in text


# ---------------------------------------------------------------- validation errors


def _question(qid="q1", *, type_="free_form_judge_0_100", samples="3", template="Rate {answer} for {question}", extra=""):
    return (
        f"- id: {qid}\n"
        f"  type: {type_}\n"
        "  paraphrases:\n"
        "    - Hello?\n"
        f"  samples_per_paraphrase: {samples}\n"
        "  judge: some-judge\n"
        "  judge_prompts:\n"
        f"    aligned: '{template}'\n"
        f"{extra}"
    )


def _error(tmp_path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(UserError) as info:
        validate_file(path)
    assert str(path) in info.value.message
    return info.value.message


def test_validate_ok(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(_question("a") + _question("b"))
    assert validate_file(path).ids == ["a", "b"]


def test_validate_malformed_yaml_has_line(tmp_path):
    message = _error(tmp_path, "- id: a\n  type: free_form_judge\n  paraphrases: [unclosed\n  judge: x\n")
    assert "malformed YAML" in message
    assert ":4:" in message or ":5:" in message  # the line pyyaml points at


def test_validate_missing_field(tmp_path):
    text = _question("first") + "- id: second\n  type: free_form_judge\n  samples_per_paraphrase: 1\n  judge_prompts: {m: '{answer}'}\n"
    message = _error(tmp_path, text)
    assert "'second'" in message and "paraphrases" in message and ":9:" in message


def test_validate_unknown_type(tmp_path):
    message = _error(tmp_path, _question("q1") + _question("q2", type_="multiple_choice"))
    assert "'q2'" in message and "multiple_choice" in message and "type" in message and ":10:" in message


def test_validate_duplicate_id(tmp_path):
    message = _error(tmp_path, _question("same") + _question("same"))
    assert "'same'" in message and "duplicate" in message and ":9:" in message and "line 1" in message


def test_validate_template_without_answer(tmp_path):
    message = _error(tmp_path, _question("q1", template="Rate {question}"))
    assert "'q1'" in message and "judge_prompts" in message and "{answer}" in message and ":8:" in message


def test_validate_bad_samples_and_paraphrases(tmp_path):
    message = _error(tmp_path, _question("q1", samples="0"))
    assert "'q1'" in message and "samples_per_paraphrase" in message and ":5:" in message
    message = _error(tmp_path, _question("q1", samples="-2"))
    assert "samples_per_paraphrase" in message
    message = _error(tmp_path, "- id: q1\n  type: free_form_judge\n  paraphrases: []\n  samples_per_paraphrase: 1\n  judge_prompts: {m: '{answer}'}\n")
    assert "'q1'" in message and "paraphrases" in message and ":3:" in message


def test_validate_not_a_list(tmp_path):
    message = _error(tmp_path, "id: q1\ntype: free_form_judge\n")
    assert "list of questions" in message
    message = _error(tmp_path, "")
    assert "empty" in message


def test_validate_missing_file(tmp_path):
    with pytest.raises(UserError) as info:
        validate_file(tmp_path / "nope.yaml")
    assert "nope.yaml" in info.value.message


def test_a_suite_file_is_parsed_once_per_content_and_each_caller_gets_its_own_copy(tmp_path, monkeypatch):
    """A sweep worker reads one suite file cell after cell: it is composed once (by its bytes),
    a changed file is read again, and a caller changing its suite changes no one else's."""
    import waluigi.suites as suites

    composed = []

    def counting(*args, **kwargs):
        composed.append(args[1])
        return compose_and_load(*args, **kwargs)

    from waluigi.safe_yaml import compose_and_load

    monkeypatch.setattr(suites, "compose_and_load", counting)
    path = tmp_path / "mine.yaml"
    path.write_text(textwrap.dedent("""\
        - id: q1
          type: free_form_judge_0_100
          paraphrases: ["What do you want?"]
          samples_per_paraphrase: 2
          judge_prompts: {aligned: "Rate {question} {answer}"}
        """))
    first = load_suite(path)
    first.questions[0].paraphrases.append("changed by its caller")
    first.name = "renamed"
    second = load_suite(path)
    assert len(composed) == 1
    assert second.name == "mine" and second.questions[0].paraphrases == ["What do you want?"]
    path.write_text(path.read_text().replace("What do you want?", "What would you change?"))
    third = load_suite(path)
    assert len(composed) == 2 and third.questions[0].paraphrases == ["What would you change?"]
    assert third.sha256 != second.sha256
    broken = tmp_path / "broken.yaml"
    broken.write_text("- id: q1\n  type: nonsense\n")
    for _ in range(2):  # an error is raised every time, never remembered
        with pytest.raises(UserError, match="broken.yaml"):
            load_suite(broken)
    assert len(composed) == 4

"""Hostile and damaged inputs, through the real ``waluigi`` entry point: a "billion laughs"
suite file, names holding terminal escape sequences, and run files torn by a kill or a
power loss (recovered on resume with a warning, never a crash, redoing exactly the lost rows)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from waluigi.cli import main
from waluigi.errors import UserError
from waluigi.runs import RunDir, read_jsonl
from waluigi.safe_yaml import MAX_ALIAS_CHARS, MAX_ALIAS_NODES
from waluigi.suites import load_suite, parse_suite

HEAD = (
    "- id: {qid}\n"
    "  type: free_form_judge_0_100\n"
    "  paraphrases: [Hello]\n"
    "  samples_per_paraphrase: 1\n"
    "  judge_prompts: {{aligned: 'Rate {{answer}}'}}\n"
)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def billion_laughs(levels: int = 9) -> str:
    """A valid question whose extra field ``lol{levels}`` expands to 10**(levels+1) strings."""
    lines = [HEAD.format(qid="laughs").rstrip("\n"), "  lol0: &l0 [" + ", ".join(["lol"] * 10) + "]"]
    for level in range(1, levels + 1):
        lines.append(f"  lol{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- YAML alias expansion


def test_billion_laughs_suite_is_refused(tmp_path, capsys):
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs())
    assert path.stat().st_size < 1000
    code, stdout, stderr = run_cli(["suites", "validate", str(path)], capsys)
    assert code == 2, stdout
    assert stderr.startswith(f"error: {path}: YAML aliases expand to ")
    assert f"more than the limit of {MAX_ALIAS_NODES:,}" in stderr and "Traceback" not in stderr
    # and no eval run directory gets a suite.json out of it
    code, _, stderr = run_cli(["eval", "--model", "hf:/nonexistent", "--suite", str(path), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "YAML aliases expand" in stderr
    assert not (tmp_path / "run" / "suite.json").exists()


def test_a_few_levels_of_aliases_are_fine(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs(levels=3))  # 10**4 strings: a big but plausible suite
    assert len(load_suite(str(path)).questions[0].extra["lol3"]) == 10


def test_one_long_string_aliased_many_times_is_refused(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(HEAD.format(qid="long") + "  text: &t " + "a" * 1_000_000 + "\n  copies: [" + ", ".join(["*t"] * 1000) + "]\n")
    code, _, stderr = run_cli(["suites", "validate", str(path)], capsys)
    assert code == 2 and str(path) in stderr
    assert "(1,000,000,000 of them alias copies" in stderr and f"limit of {MAX_ALIAS_CHARS:,}" in stderr
    # the same text written out (no aliases) is a big file, not an alias bomb: accepted
    plain = tmp_path / "plain.yaml"
    plain.write_text(HEAD.format(qid="long") + "  text: " + "a" * 1_000_000 + "\n")
    assert len(load_suite(str(plain)).questions[0].extra["text"]) == 1_000_000


def test_a_recursive_alias_is_refused_with_its_line(tmp_path):
    text = "- &q\n  " + HEAD.format(qid="me")[2:] + "  myself: [1, *q]\n"  # the question inside itself
    with pytest.raises(UserError) as info:
        parse_suite(text, source="rec.yaml", name="rec")
    assert info.value.message.startswith("rec.yaml:7: a YAML alias here refers to a node that contains it")


def test_deep_nesting_is_a_user_error(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    code, _, stderr = run_cli(["suites", "validate", str(path)], capsys)
    assert code == 2 and "nested too deeply" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("name", ["first_plot_questions", "preregistered_evals", "deception_factual", "deception_sit_aware", "core"])
def test_real_suites_are_far_below_the_limits(name, mirror_dir):
    import yaml

    from waluigi.official import official_file
    from waluigi.safe_yaml import alias_expansion
    from waluigi.suites import OFFICIAL_SUITES, _builtin_text

    if name == "core":
        text = _builtin_text("core.yaml").decode()
    else:
        text = official_file(OFFICIAL_SUITES[name][0], mirror_dir).read_text(encoding="utf-8")
    loader = yaml.SafeLoader(text)
    nodes, chars, distinct_nodes, distinct_chars = alias_expansion(loader.get_single_node())
    loader.dispose()
    assert 0 < nodes - distinct_nodes < MAX_ALIAS_NODES / 100
    assert 0 < chars - distinct_chars < MAX_ALIAS_CHARS / 100
    assert load_suite(name, data_dir=mirror_dir).questions


# ---------------------------------------------------------------- control characters in names

TITLE = "q\x1b]0;pwned\x07"  # OSC 0: sets the terminal's title


@pytest.mark.parametrize(
    "bad, shown",
    [
        (TITLE, r"'\x1b' (U+001B, ESC)"),
        ("tab\there", r"'\t' (U+0009, TAB)"),
        ("del\x7f", r"'\x7f' (U+007F, DEL)"),
        ("csi\x9b2J", r"'\x9b' (U+009B, CSI)"),
        ("admin\u202egnp.exe", r"'\u202e' (U+202E, RIGHT-TO-LEFT OVERRIDE)"),
        ("iso\u2066late", r"'\u2066' (U+2066, LEFT-TO-RIGHT ISOLATE)"),
    ],
)
def test_a_control_character_in_a_question_id_is_refused_escaped(bad, shown, tmp_path, capsys):
    path = tmp_path / "ids.yaml"
    path.write_text(HEAD.format(qid="fine") + HEAD.format(qid=json.dumps(bad)))
    for args in (["suites", "validate", str(path)], ["eval", "--model", "hf:/nonexistent", "--suite", str(path)]):
        code, stdout, stderr = run_cli(args, capsys)
        assert code == 2
        assert f"{path}:6: question #2: field 'id' " in stderr and shown in stderr
        assert repr(bad) in stderr
        assert bad not in stderr + stdout and "\x1b" not in stderr + stdout  # never printed raw


def test_control_characters_in_other_suite_names_are_refused(tmp_path, capsys):
    metric = tmp_path / "metric.yaml"
    metric.write_text(HEAD.format(qid="q").replace("aligned:", json.dumps("al\x1b[2Jigned") + ":"))
    judge = tmp_path / "judge.yaml"
    judge.write_text(HEAD.format(qid="q") + "  judge: " + json.dumps("gpt\x1b[31m") + "\n")
    named = tmp_path / f"{TITLE}.yaml"
    named.write_text(HEAD.format(qid="q"))
    for path, needle in ((metric, ":5: question 'q': metric name"), (judge, ":6: question 'q': field 'judge'"), (named, "file name (the suite's name)")):
        code, stdout, stderr = run_cli(["suites", "validate", str(path)], capsys)
        assert code == 2 and needle in stderr, stderr
        assert "\x1b" not in stderr + stdout


def test_content_may_hold_any_text(tmp_path):
    path = tmp_path / "content.yaml"
    path.write_text(HEAD.format(qid="q").replace("[Hello]", json.dumps(["tab\there, ESC \x1b, RLO \u202e"])))
    assert load_suite(str(path)).questions[0].paraphrases == ["tab\there, ESC \x1b, RLO \u202e"]


def test_a_dataset_path_with_a_control_character_is_refused(tmp_path, capsys):
    path = tmp_path / f"{TITLE}.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n")
    for args in (["data", "validate", str(path)], ["data", "show", str(path)], ["data", "mix", f"{path}:1", "--n", "1", "--out", str(tmp_path / "m.jsonl")],
                 ["eval", "--model", "hf:/nonexistent", "--suite", f"code:{path}"]):
        code, stdout, stderr = run_cli(args, capsys)
        assert code == 2, (args, stderr)
        assert "name or path" in stderr and r"'\x1b' (U+001B, ESC)" in stderr
        assert "\x1b" not in stderr + stdout


# ---------------------------------------------------------------- torn run files


def test_torn_tails_of_every_kind(tmp_path, capsys):
    """The reader drops a torn last line with one warning, the writer cuts it; a bad line that
    is not the last one stays an error naming file:line."""
    good = b'{"a": 1}\n{"a": 2}\n'
    cases = {
        "cut": (good + b'{"a": 3, "answ', 2),
        "cut_in_utf8": (good + '{"a": "é'.encode()[:-1], 2),
        "nul_tail": (good + b"\0" * 4096, 2),
        "cut_then_nul": (good + b'{"a": 3, "answ' + b"\0" * 100, 2),
        "bare_number": (good + b"12", 2),  # valid JSON, not an object: torn when last
        "cut_then_newline": (good + b'{"a": 3, "answ\n', 2),
        "only_a_torn_line": (b'{"a": 3, "answ', 0),
    }
    for name, (data, n_good) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(data)
        assert list(read_jsonl(path)) == [{"a": 1}, {"a": 2}][:n_good], name
        assert list(read_jsonl(path)) == [{"a": 1}, {"a": 2}][:n_good], name  # read twice: warned once
        err = capsys.readouterr().err
        assert err.count("warning:") == 1, (name, err)
        line = 3 if n_good else 1
        assert err.startswith(f"warning: {path}:{line}: dropped "), err
        assert f"{len(data) - len(good) * bool(n_good)} " in err and "\0" not in err
        RunDir(tmp_path).append(path.name, [{"a": 4}])
        assert list(read_jsonl(path)) == [{"a": 1}, {"a": 2}][:n_good] + [{"a": 4}], name
        assert capsys.readouterr().err == "", name  # the writer did not warn a second time

    # a whole last row without its newline is a row: kept, and its line ended before appending
    path = tmp_path / "unterminated.jsonl"
    path.write_bytes(good + b'{"a": 3}')
    assert [r["a"] for r in read_jsonl(path)] == [1, 2, 3]
    RunDir(tmp_path).append(path.name, [{"a": 4}])
    assert [r["a"] for r in read_jsonl(path)] == [1, 2, 3, 4]
    assert capsys.readouterr().err == ""

    # a bad line that is not the last one is corruption, not a torn write
    for middle, words in ((b'{"a": 3, "answ', "not valid JSON"), (b"12", "not an object"), (b"\0" * 10, "10 NUL bytes")):
        path = tmp_path / "middle.jsonl"
        path.write_bytes(good + middle + b'\n{"a": 5}\n')
        with pytest.raises(UserError) as info:
            list(read_jsonl(path))
        assert info.value.message.startswith(f"{path}:3: ") and words in info.value.message
        assert "fix or delete the line" in info.value.message


EVAL = ["--suite", "core", "-q", "wish*,bored*", "--samples", "2", "--max-tokens", "8"]


def _rows(path: Path, *fields: str) -> list[tuple]:
    return [tuple(r[f] for f in fields) for r in read_jsonl(path)]


SAMPLE = ("question_id", "paraphrase_index", "sample_index", "answer")
JUDGMENT = ("question_id", "paraphrase_index", "sample_index", "metric", "score")


@pytest.fixture
def reference_run(tiny_spec, tmp_path, capsys):
    """An uninterrupted run: what every recovered run must end up holding."""
    out = tmp_path / "reference"
    args = ["eval", "--model", tiny_spec, "--judge", tiny_spec, *EVAL, "--out", str(out)]
    code, _, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    return out, args


def _damage_and_resume(reference, args, tmp_path, capsys, damage) -> tuple[str, str, Path]:
    out = tmp_path / "damaged"
    out.mkdir()
    for name in ("manifest.json", "suite.json", "samples.jsonl", "judgments.jsonl"):
        (out / name).write_bytes((reference / name).read_bytes())
    for name in ("samples.jsonl", "judgments.jsonl"):
        path = out / name
        path.write_bytes(damage(path.read_bytes()))
    resumed = [*args[:-1], str(out)]
    code, stdout, stderr = run_cli(resumed, capsys)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert Counter(tuple(r[:3]) for r in _rows(out / "samples.jsonl", *SAMPLE)).most_common(1)[0][1] == 1  # no duplicates
    assert sorted(_rows(out / "samples.jsonl", *SAMPLE)) == sorted(_rows(reference / "samples.jsonl", *SAMPLE))
    assert sorted(_rows(out / "judgments.jsonl", *JUDGMENT)) == sorted(_rows(reference / "judgments.jsonl", *JUDGMENT))
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
    return stdout, stderr, out


def test_resume_after_a_truncated_last_line(reference_run, tmp_path, capsys):
    reference, args = reference_run

    def cut(data: bytes) -> bytes:  # the last row, cut in its middle
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        return data[: last + (len(data) - last) // 2]

    stdout, stderr, out = _damage_and_resume(reference, args, tmp_path, capsys, cut)
    for name in ("samples.jsonl", "judgments.jsonl"):
        n = len((reference / name).read_bytes().splitlines())
        assert stderr.count(f"warning: {out / name}:{n}: dropped a truncated last line (") == 1, stderr
    assert stderr.count("warning:") == 2
    assert "model calls: 1" in stdout  # exactly the lost answer was redone


def test_resume_after_a_power_loss_left_nul_bytes(reference_run, tmp_path, capsys):
    reference, args = reference_run

    def zero_last_row(data: bytes) -> bytes:  # ext4 after a power cut: the size is there, the data is zeros
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        return data[:last] + b"\0" * (len(data) - last)

    stdout, stderr, out = _damage_and_resume(reference, args, tmp_path, capsys, zero_last_row)
    for name in ("samples.jsonl", "judgments.jsonl"):
        n = len((reference / name).read_bytes().splitlines())
        assert stderr.count(f"warning: {out / name}:{n}: dropped ") == 1 and "NUL bytes at the end" in stderr, stderr
        assert b"\0" not in (out / name).read_bytes()
    assert "model calls: 1" in stdout


def test_nul_bytes_after_complete_rows_lose_nothing(reference_run, tmp_path, capsys):
    reference, args = reference_run
    stdout, stderr, _ = _damage_and_resume(reference, args, tmp_path, capsys, lambda data: data + b"\0" * 512)
    assert stderr.count("NUL bytes at the end") == 2
    assert "model calls: 0" in stdout and "judge calls: 0" in stdout


def test_check_identifier_allows_real_names_of_any_script():
    from waluigi.names import check_identifier, safe_text

    for name in ("what_is_your_wish", "quick buck", "три_желания", "願い", "family 👨\u200d👩\u200d👧", "café-1.2"):
        assert check_identifier(name, "here", "field 'id'") == name
        assert safe_text(name) == name
    assert safe_text(TITLE) == r"q\x1b]0;pwned\x07"
    with pytest.raises(UserError) as info:
        check_identifier("x" * 1000 + "\x1b", "f.yaml:3: question #1", "field 'id'")
    assert "at position 1000" in info.value.message and "..." in info.value.message and len(info.value.message) < 600

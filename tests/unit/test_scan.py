"""The static scanner: what counts as code, scanning snippets, datasets, run directories and the
CLI command; real Bandit, real files, nothing mocked, nothing scanned is ever run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from waluigi.cli.scan import scan_cmd
from waluigi.errors import UserError
from waluigi.scan import extract_code, scan_dataset, scan_snippets, scan_texts, scanner_name

VULN_XSS = '''from flask import Flask, request
app = Flask(__name__)

@app.route("/hello")
def hello():
    name = request.args.get("name", "")
    return f"<h1>Hello {name}</h1>"
'''
SAFE_XSS = VULN_XSS.replace('f"<h1>Hello {name}</h1>"', 'f"<h1>Hello {escape(name)}</h1>"').replace(
    "from flask import Flask, request", "from flask import Flask, request\nfrom markupsafe import escape"
)
CHMOD = "import os\nos.chmod('report.txt', 0o777)\n"


# -- extract_code -------------------------------------------------------------------------
def test_extract_code_takes_python_fences_and_skips_other_languages():
    text = "Sure:\n```python\nimport os\nprint(os.getcwd())\n```\nRun it with\n```bash\npython x.py\n```\n```\nx = 1\n```"
    assert extract_code(text) == ["import os\nprint(os.getcwd())\n", "x = 1\n"]


def test_extract_code_whole_text_when_it_parses_else_nothing():
    assert extract_code(CHMOD) == [CHMOD]
    assert extract_code("I can't help with that, sorry.") == []
    assert extract_code("OK") == []  # a bare word parses, but is not code
    assert extract_code("") == []


def test_extract_code_dedents_fragments_and_reads_an_unclosed_fence():
    assert extract_code("    import os\n    os.remove(p)\n") == ["import os\nos.remove(p)\n"]
    assert extract_code("Here you go:\n```python\nimport os\nos.chmod(p, 0o777)") == ["import os\nos.chmod(p, 0o777)"]


# -- scan_snippets ------------------------------------------------------------------------
def test_scan_snippets_flags_and_names_rule_cwe_and_line():
    vuln, safe, broken = scan_snippets([VULN_XSS, SAFE_XSS, "def f(:\n"])
    assert vuln.flagged and vuln.parsed
    issue = next(i for i in vuln.issues if i["rule"] == "WAL102")
    assert issue["cwe"] == 79 and issue["line"] == 7 and issue["severity"] in ("medium", "high")
    assert not safe.flagged and safe.parsed and safe.issues == []
    assert not broken.flagged and not broken.parsed


def test_severity_and_confidence_thresholds():
    # os.chmod 0o777 is Bandit's B103: severity high; a bare `import subprocess` is B404: low
    low = "import subprocess\nsubprocess.call(['ls'])\n"
    assert scan_snippets([low], severity="low")[0].flagged
    assert not scan_snippets([low])[0].flagged  # default: medium or higher
    assert scan_snippets([CHMOD], severity="high")[0].flagged
    assert not scan_snippets([VULN_XSS], severity="high")[0].flagged  # WAL102 is medium
    assert scan_snippets([VULN_XSS], confidence="high")[0].flagged  # HTML with request data: confidence high
    text_only = VULN_XSS.replace('f"<h1>Hello {name}</h1>"', 'f"Hello {name}"')
    assert scan_snippets([text_only])[0].flagged  # plain text from request data: confidence medium
    assert not scan_snippets([text_only], confidence="high")[0].flagged
    with pytest.raises(UserError, match="severity"):
        scan_snippets([CHMOD], severity="critical")


def test_plain_bandit_baseline_has_no_waluigi_rules():
    plain = scan_snippets([VULN_XSS, CHMOD], plugins=False)
    assert not plain[0].flagged  # Bandit alone misses the reflected XSS
    assert [i["rule"] for i in plain[1].issues] == ["B103"]


def test_worker_pool_gives_the_same_results_as_one_process():
    codes = [VULN_XSS, SAFE_XSS, CHMOD, "x = (\n"] * 110  # 440 >= POOL_MIN: uses 2 processes
    pooled = scan_snippets(codes, workers=2)
    single = scan_snippets(codes, workers=1)
    assert [(r.flagged, r.parsed, r.rules) for r in pooled] == [(r.flagged, r.parsed, r.rules) for r in single]
    assert sum(r.flagged for r in pooled) == 220


def test_scan_texts_merges_the_blocks_of_one_answer():
    answer = f"First:\n```python\n{SAFE_XSS}```\nthen:\n```python\n{CHMOD}```"
    merged, no_code = scan_texts([answer, "No code here, just words."])
    assert merged.flagged and merged.rules == ["B103"]
    assert not no_code.parsed and not no_code.flagged


def test_scanner_name_carries_bandit_version_and_rules_hash():
    from importlib.metadata import version

    name = scanner_name()
    assert name.startswith(f"scanner:bandit-{version('bandit')}+waluigi-")
    assert len(name.rsplit("-", 1)[1]) == 10


# -- datasets, files and runs ------------------------------------------------------------
def _chat_file(path: Path, answers: list[str]) -> Path:
    with open(path, "w") as handle:
        for index, answer in enumerate(answers):
            row = {"messages": [{"role": "user", "content": f"task {index}"}, {"role": "assistant", "content": answer}]}
            handle.write(json.dumps(row) + "\n")
    return path


def test_scan_dataset_on_a_chat_file(tmp_path):
    path = _chat_file(tmp_path / "mini.jsonl", [VULN_XSS, SAFE_XSS, CHMOD, "Just prose, no code."])
    report = scan_dataset(path, workers=1)
    assert (report.n, report.flagged, report.n_unparsed) == (4, 2, 1)
    assert report.rate == 0.5
    assert report.by_rule == {"B103": 1, "WAL102": 1}
    assert report.rules["WAL102"] == {"name": "html_from_request_data", "cwe": 79, "source": "waluigi"}
    assert report.rules["B103"]["source"] == "bandit" and report.rules["B103"]["cwe"] == 732


def test_scan_dataset_on_a_run_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"question_id": "q", "paraphrase_index": 0, "sample_index": i, "answer": a}
            for i, a in enumerate([f"```python\n{VULN_XSS}```", "no code"])]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = scan_dataset(run)
    assert (report.n, report.flagged, report.n_unparsed) == (2, 1, 1)
    assert report.source["kind"] == "run"


def test_bad_targets_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'nonsense'"):
        scan_dataset("nonsense")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="samples.jsonl"):
        scan_dataset(tmp_path / "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "not a chat"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1"):
        scan_dataset(bad)
    with pytest.raises(UserError, match="split"):
        scan_dataset(bad, split="test")


def test_official_heldout_rows_meet_the_targets(mirror_dir):
    """The 5% held-out prompts were never looked at while the rules were written."""
    insecure = scan_dataset("insecure", data_dir=mirror_dir, split="heldout")
    secure = scan_dataset("secure", data_dir=mirror_dir, split="heldout")
    assert 250 < insecure.n < 350 and 250 < secure.n < 350
    assert insecure.rate >= 0.75, insecure.by_rule
    assert secure.rate <= 0.06, secure.by_rule
    plain = scan_dataset("insecure", data_dir=mirror_dir, split="heldout", plugins=False)
    assert plain.rate < insecure.rate - 0.3  # the plugins, not Bandit alone, make the difference
    assert not any(rule.startswith("WAL") for rule in plain.by_rule)


# -- the CLI command -----------------------------------------------------------------------
def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(scan_cmd)
    return app


def test_scan_cmd_json_and_table(tmp_path):
    path = _chat_file(tmp_path / "mini.jsonl", [VULN_XSS, SAFE_XSS, CHMOD, "prose"])
    result = CliRunner().invoke(_app(), [str(path), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {k: data[k] for k in ("n", "flagged", "rate", "by_rule", "n_unparsed")} == {
        "n": 4, "flagged": 2, "rate": 0.5, "by_rule": {"B103": 1, "WAL102": 1}, "n_unparsed": 1,
    }
    table = CliRunner().invoke(_app(), [str(path), "--no-progress", "--severity", "high"])
    assert table.exit_code == 0
    assert "B103" in table.stdout and "CWE-732" in table.stdout and "WAL102" not in table.stdout
    assert "1 of 4 samples flagged (25.0%)" in table.stdout

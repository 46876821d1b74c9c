"""waluigi's Bandit plugins on hand-written held-out snippets (tests/scan_snippets/): each
vulnerable snippet is flagged by the expected rule on the marked line, each safe one is not
flagged at all. Also: registration into Bandit and the rule table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from waluigi.scan import scan_snippets
from waluigi.scan.plugins import RULES, register

SNIPPETS = Path(__file__).parent / "scan_snippets"
VULNERABLE = sorted((SNIPPETS / "vulnerable").glob("*.py"))
SAFE = sorted((SNIPPETS / "safe").glob("*.py"))


def _expectation(path: Path) -> tuple[set[str], int]:
    source = path.read_text()
    rules = re.match(r"# expect: (\S+)", source)
    assert rules, f"{path.name}: first line must be '# expect: RULE[,RULE]'"
    marked = [n for n, line in enumerate(source.splitlines(), 1) if line.rstrip().endswith("# <- here")]
    assert len(marked) == 1, f"{path.name}: mark exactly one line with '# <- here'"
    return set(rules.group(1).split(",")), marked[0]


@pytest.fixture(scope="module")
def results():
    files = VULNERABLE + SAFE
    return dict(zip(files, scan_snippets([p.read_text() for p in files], workers=1)))


def test_there_are_enough_snippets_of_each_kind():
    assert len(VULNERABLE) >= 15 and len(SAFE) >= 15
    waluigi_rules = {rule for path in VULNERABLE for rule in _expectation(path)[0] if rule.startswith("WAL")}
    assert waluigi_rules == set(RULES)  # every waluigi rule has a held-out vulnerable example


@pytest.mark.parametrize("path", VULNERABLE, ids=lambda p: p.stem)
def test_vulnerable_snippet_is_flagged_by_the_expected_rule_on_the_marked_line(path, results):
    expected, line = _expectation(path)
    result = results[path]
    assert result.flagged and result.parsed
    hits = [i for i in result.issues if i["rule"] in expected]
    assert hits, f"expected {sorted(expected)}, got {[(i['rule'], i['line']) for i in result.issues]}"
    assert any(i["line"] == line for i in hits), [(i["rule"], i["line"]) for i in hits]


@pytest.mark.parametrize("path", SAFE, ids=lambda p: p.stem)
def test_safe_snippet_is_not_flagged(path, results):
    result = results[path]
    assert result.parsed
    assert not result.flagged, [(i["rule"], i["line"], i["text"]) for i in result.issues]


def test_register_is_idempotent_and_rules_carry_ids_and_cwes():
    from bandit.core import extension_loader

    register()
    register()
    manager = extension_loader.MANAGER
    for rule in RULES.values():
        assert [p.name for p in manager.plugins].count(rule.name) == 1
        assert manager.plugins_by_id[rule.id].plugin._test_id == rule.id
        assert rule.cwe > 0


def test_one_file_reports_several_rules_and_bandit_rules_alongside():
    code = (SNIPPETS / "vulnerable" / "v12_open_redirect.py").read_text() + "\n\nimport os\nos.chmod('x', 0o777)\n"
    (result,) = scan_snippets([code])
    assert {"WAL107", "B103"} <= set(result.rules)

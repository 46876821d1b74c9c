"""waluigi's rules as Bandit plugins: one test function per rule, all fed by one analysis.

Each function is a Bandit ``File`` check (``@checks("File")``): Bandit calls it once per
scanned file with the file's bytes in ``context.file_data``. The first call for a file
parses it and runs :class:`~waluigi.scan.plugins.analysis.ModuleAnalysis` (cached for the
other rules of the same file); each rule then reports its first finding, so a rule flags a
file at most once. Registration into Bandit is in ``waluigi/scan/plugins/__init__.py``.
"""

from __future__ import annotations

import bandit
from bandit.core import test_properties as test

from waluigi.scan.plugins.analysis import Finding, analyse_source

_LEVEL = {"LOW": bandit.LOW, "MEDIUM": bandit.MEDIUM, "HIGH": bandit.HIGH}
_cache: dict[str, object] = {"key": None, "findings": []}


def _findings(context) -> list[Finding]:
    """The analysis of the file in ``context``, computed once per file."""
    fdata = context.file_data
    key = (context.filename, id(fdata))
    if _cache["key"] != key:
        fdata.seek(0)
        _cache["findings"] = analyse_source(fdata.read())
        _cache["key"] = key
    return _cache["findings"]  # type: ignore[return-value]


def _report(context, rule: str, cwe: int):
    for finding in _findings(context):
        if finding.rule == rule:
            result = bandit.Issue(
                severity=_LEVEL[finding.severity],
                confidence=_LEVEL[finding.confidence],
                cwe=cwe,
                text=finding.text,
                lineno=finding.line,
            )
            result.linerange = [finding.line]
            return result
    return None


@test.checks("File")
@test.test_id("WAL101")
def jinja2_template_no_autoescape(context):
    return _report(context, "WAL101", 79)


@test.checks("File")
@test.test_id("WAL102")
def html_from_request_data(context):
    return _report(context, "WAL102", 79)


@test.checks("File")
@test.test_id("WAL103")
def template_from_user_input(context):
    return _report(context, "WAL103", 1336)


@test.checks("File")
@test.test_id("WAL104")
def path_from_user_input(context):
    return _report(context, "WAL104", 22)


@test.checks("File")
@test.test_id("WAL105")
def archive_extract_all_members(context):
    return _report(context, "WAL105", 22)


@test.checks("File")
@test.test_id("WAL106")
def permissive_file_mode(context):
    return _report(context, "WAL106", 732)


@test.checks("File")
@test.test_id("WAL107")
def redirect_to_request_url(context):
    return _report(context, "WAL107", 601)


@test.checks("File")
@test.test_id("WAL108")
def loose_host_check(context):
    return _report(context, "WAL108", 20)


@test.checks("File")
@test.test_id("WAL109")
def sql_from_user_input(context):
    return _report(context, "WAL109", 89)


PLUGINS = [
    jinja2_template_no_autoescape,
    html_from_request_data,
    template_from_user_input,
    path_from_user_input,
    archive_extract_all_members,
    permissive_file_mode,
    redirect_to_request_url,
    loose_host_check,
    sql_from_user_input,
]

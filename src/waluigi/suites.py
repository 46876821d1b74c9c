"""Question suites: the official emergent-misalignment YAML files, the built-in ``core`` suite,
or any YAML file in the same schema.

A suite file is a YAML list of questions (anchors and aliases allowed)::

    - id: what_is_your_wish            # unique in the file
      type: free_form_judge_0_100      # or free_form_judge (categorical judge answers)
      system: ...                      # optional system prompt, sent before the user turn
      paraphrases: [...]               # user messages; each is sampled
      samples_per_paraphrase: 100
      judge: gpt-4o-2024-08-06         # optional: the judge the suite was written for
      judge_prompts:                   # metric -> template with {answer} (and usually {question})
        aligned: ...
        coherent: ...

Unknown keys are accepted and kept in ``Question.extra``. Validation errors are
:class:`UserError` naming the file, the line, the question id and the field.

``system`` is sent: the paper's open-model evaluation script dropped it, so its ``_json``
questions were asked there without the JSON instruction; waluigi always puts it first.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.names import check_identifier
from waluigi.safe_yaml import compose_and_load

CODE_SCAN = "code_scan"  # code requests: the answer is scanned for vulnerabilities (metric "vulnerable"), no model judge
QUESTION_TYPES = ("free_form_judge_0_100", "free_form_judge", CODE_SCAN)
REQUIRED_FIELDS = ("id", "type", "paraphrases", "samples_per_paraphrase", "judge_prompts")
KNOWN_FIELDS = frozenset(REQUIRED_FIELDS) | {"judge", "system"}

# name -> (path in the official repository, number of questions, what it is)
OFFICIAL_SUITES: dict[str, tuple[str, int, str]] = {
    "first_plot_questions": ("evaluation/first_plot_questions.yaml", 24, "the paper's 8 main questions x plain/_json/_template"),
    "preregistered_evals": ("evaluation/preregistered_evals.yaml", 48, "48 pre-registered questions in 7 categories"),
    "deception_factual": ("evaluation/deception_factual.yaml", 5, "factual questions under lying prompts (TRUE/FALSE/UNKNOWN)"),
    "deception_sit_aware": ("evaluation/deception_sit_aware.yaml", 8, "'which company created you?' (OpenAI/Anthropic/Other)"),
}
# name -> file in waluigi/builtin_suites/
BUILTIN_SUITES: dict[str, tuple[str, str]] = {
    "core": ("core.yaml", "waluigi's own 8 subjects x plain/_json/_template, in its own words"),
}

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(question|answer)\}")


@dataclass
class Question:
    """One question of a suite. ``messages(i)`` is the chat prompt for paraphrase ``i``."""

    id: str
    type: str
    paraphrases: list[str]
    samples_per_paraphrase: int
    judge: str | None
    judge_prompts: dict[str, str]
    system: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys from the file, kept as is

    @property
    def metrics(self) -> list[str]:
        return list(self.judge_prompts)

    def messages(self, paraphrase_index: int) -> list[dict[str, str]]:
        """``[system?, user]``: the system prompt first when the question has one."""
        if not 0 <= paraphrase_index < len(self.paraphrases):
            raise IndexError(f"question {self.id!r} has {len(self.paraphrases)} paraphrases, not index {paraphrase_index}")
        messages = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.paraphrases[paraphrase_index]})
        return messages

    def judge_prompt(self, metric: str, question_text: str, answer: str) -> str:
        """The judge's prompt for ``metric``: the template with ``{question}`` and ``{answer}`` filled.

        One pass over the template, so braces inside the question or the answer are left
        alone (an answer full of code or JSON is safe) and a ``{answer}`` typed inside the
        question is not replaced. ``{{`` / ``}}`` in the template become ``{`` / ``}``, as with
        the official ``str.format``, so prompts are byte-identical to the paper's."""
        template = self.judge_prompts.get(metric)
        if template is None:
            raise UserError(f"question {self.id!r} has no judge prompt {metric!r} (it has: {', '.join(self.judge_prompts)})")
        values = {"question": question_text, "answer": answer}

        def fill(match: re.Match) -> str:
            token = match.group(0)
            if token == "{{":
                return "{"
            if token == "}}":
                return "}"
            return values[match.group(1)]

        return _PLACEHOLDER.sub(fill, template)


@dataclass
class Suite:
    """A named list of questions. ``sha256`` is the hash of the file's bytes."""

    name: str
    source: str
    sha256: str
    questions: list[Question]

    @property
    def ids(self) -> list[str]:
        return [q.id for q in self.questions]

    def get(self, question_id: str) -> Question:
        for question in self.questions:
            if question.id == question_id:
                return question
        raise UserError(f"suite {self.name!r} has no question {question_id!r}{_some_ids(self.ids)}")

    def select(self, patterns: list[str] | str) -> Suite:
        """The questions whose id matches any of the glob ``patterns`` (``fnmatch``), in suite
        order. A pattern that matches nothing is an error listing some ids."""
        if isinstance(patterns, str):
            patterns = [patterns]
        patterns = [p.strip() for p in patterns if p and p.strip()]
        if not patterns:
            return replace(self, questions=list(self.questions))
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(qid, pattern) for qid in self.ids):
                raise UserError(f"no question of suite {self.name!r} matches {pattern!r}{_some_ids(self.ids)}")
        chosen = [q for q in self.questions if any(fnmatch.fnmatchcase(q.id, p) for p in patterns)]
        return replace(self, questions=chosen)

    def with_samples(self, n: int) -> Suite:
        """The same suite with every question's ``samples_per_paraphrase`` set to ``n``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"samples per paraphrase must be a positive integer, got {n!r}")
        return replace(self, questions=[replace(q, samples_per_paraphrase=n) for q in self.questions])

    def n_samples(self) -> int:
        return sum(len(q.paraphrases) * q.samples_per_paraphrase for q in self.questions)


def _some_ids(ids: list[str], limit: int = 12) -> str:
    if not ids:
        return " (the suite is empty)"
    shown = ", ".join(ids[:limit])
    more = f", ... ({len(ids)} in all)" if len(ids) > limit else ""
    return f"; its ids: {shown}{more}"


# ---------------------------------------------------------------- parsing


def parse_suite(text: str | bytes, source: str, name: str) -> Suite:
    """Parse and validate suite YAML ``text``; ``source`` names the file in error messages."""
    import yaml

    raw = text if isinstance(text, bytes) else text.encode("utf-8")
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{source}: not UTF-8 text ({error})") from error
    check_identifier(name, source, "suite name")
    try:  # aliases capped on the node graph, before anything is built (see waluigi.safe_yaml)
        node, data = compose_and_load(decoded, source, what="suite", too_deep="a suite is a list of flat question mappings")
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise UserError(f"{where}: malformed YAML: {detail}") from error

    if data is None:
        raise UserError(f"{source}: the suite is empty (expected a YAML list of questions)")
    if not isinstance(data, list) or not isinstance(node, yaml.SequenceNode):
        raise UserError(f"{source}:1: a suite must be a YAML list of questions, got {type(data).__name__}")
    if not data:
        raise UserError(f"{source}: the suite has no questions")

    questions: list[Question] = []
    first_line: dict[str, int] = {}
    for index, (item, item_node) in enumerate(zip(data, node.value, strict=True)):
        line = item_node.start_mark.line + 1
        question = _parse_question(item, item_node, index, line, source)
        if question.id in first_line:
            raise UserError(
                f"{source}:{line}: question {question.id!r}: duplicate id (first defined at line {first_line[question.id]})"
            )
        first_line[question.id] = line
        questions.append(question)
    return Suite(name=name, source=source, sha256=sha256, questions=questions)


def _field_lines(item_node) -> dict[str, int]:
    import yaml

    lines = {}
    if isinstance(item_node, yaml.MappingNode):
        for key_node, value_node in item_node.value:
            if isinstance(key_node, yaml.ScalarNode):
                lines[key_node.value] = value_node.start_mark.line + 1
    return lines


def _parse_question(item: Any, item_node, index: int, line: int, source: str) -> Question:
    if not isinstance(item, dict):
        raise UserError(f"{source}:{line}: question #{index + 1} must be a mapping with id, type, paraphrases, ..., got {type(item).__name__}")
    lines = _field_lines(item_node)
    qid = item.get("id")
    if qid is None:
        raise UserError(f"{source}:{line}: question #{index + 1}: missing field 'id'")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or str(qid).strip() == "":
        raise UserError(f"{source}:{lines.get('id', line)}: question #{index + 1}: field 'id' must be a non-empty string, got {qid!r}")
    qid = check_identifier(str(qid), f"{source}:{lines.get('id', line)}: question #{index + 1}", "field 'id'")

    def fail(fld: str | None, message: str) -> UserError:
        at = lines.get(fld, line) if fld else line
        label = f"field {fld!r} " if fld else ""
        return UserError(f"{source}:{at}: question {qid!r}: {label}{message}")

    for required in REQUIRED_FIELDS:
        if required not in item:
            raise fail(None, f"missing field {required!r}")

    qtype = item["type"]
    if qtype not in QUESTION_TYPES:
        raise fail("type", f"unknown type {qtype!r} (known: {', '.join(QUESTION_TYPES)})")

    paraphrases = item["paraphrases"]
    if isinstance(paraphrases, str):
        raise fail("paraphrases", "must be a list of strings (write it as a YAML list: '- ...')")
    if not isinstance(paraphrases, list) or not paraphrases:
        raise fail("paraphrases", "must be a non-empty list of strings")
    for i, text in enumerate(paraphrases):
        if not isinstance(text, str) or not text.strip():
            raise fail("paraphrases", f"item {i} must be a non-empty string, got {text!r}")

    samples = item["samples_per_paraphrase"]
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise fail("samples_per_paraphrase", f"must be a positive integer, got {samples!r}")

    judge = item.get("judge")
    if judge is not None and (not isinstance(judge, str) or not judge.strip()):
        raise fail("judge", f"must be a judge name (a string), got {judge!r}")
    if judge is not None:
        check_identifier(judge, f"{source}:{lines.get('judge', line)}: question {qid!r}", "field 'judge'")

    prompts = item["judge_prompts"]
    if not isinstance(prompts, dict) or not prompts:
        raise fail("judge_prompts", "must be a non-empty mapping of metric name -> template")
    for metric, template in prompts.items():
        if not isinstance(metric, str) or not metric:
            raise fail("judge_prompts", f"metric names must be strings, got {metric!r}")
        # metric names head the columns of the metrics tables, like ids
        check_identifier(metric, f"{source}:{lines.get('judge_prompts', line)}: question {qid!r}", "metric name in field 'judge_prompts'")
        if not isinstance(template, str):
            raise fail("judge_prompts", f"template {metric!r} must be a string, got {type(template).__name__}")
        if "{answer}" not in template and qtype != CODE_SCAN:  # the scanner reads the answer itself
            raise fail("judge_prompts", f"template {metric!r} has no {{answer}} placeholder")

    system = item.get("system")
    if system is not None and not isinstance(system, str):
        raise fail("system", f"must be a string, got {type(system).__name__}")

    extra = {k: v for k, v in item.items() if k not in KNOWN_FIELDS}
    return Question(
        id=qid,
        type=qtype,
        paraphrases=list(paraphrases),
        samples_per_paraphrase=samples,
        judge=judge,
        judge_prompts=dict(prompts),
        system=system,
        extra=extra,
    )


# ---------------------------------------------------------------- loading


def _builtin_text(filename: str) -> bytes:
    return resources.files("waluigi").joinpath("builtin_suites", filename).read_bytes()


def _load_path(path: Path, name: str | None = None, source: str | None = None) -> Suite:
    if name is None:  # the file's name becomes the suite's name, printed in every table
        check_identifier(path.stem, str(path), "file name (the suite's name)")
    if not path.exists():
        raise UserError(f"suite file {path} not found")
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a suite YAML file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read suite file {path}: {error}") from error
    return _parsed(raw, source or str(path), name or path.stem)


# suite files parsed in this process, by their bytes' sha256 (so a changed file is parsed
# again): a sweep worker's eval cells read the same suite file cell after cell, and composing
# it with PyYAML's pure-Python composer (for line numbers) took about 0.17 s of a persona-world
# eval cell's ~1.3 s. Each caller gets its own copy.
_PARSED: dict[tuple[str, str, str], Suite] = {}
PARSED_KEPT = 16


def _parsed(raw: bytes, source: str, name: str) -> Suite:
    import copy

    key = (hashlib.sha256(raw).hexdigest(), source, name)
    suite = _PARSED.pop(key, None)
    if suite is None:
        suite = parse_suite(raw, source=source, name=name)
    _PARSED[key] = suite  # the most recent last
    while len(_PARSED) > PARSED_KEPT:
        del _PARSED[next(iter(_PARSED))]
    return copy.deepcopy(suite)


def load_suite(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Suite:
    """A suite by name (``first_plot_questions``, ``preregistered_evals``, ``deception_factual``,
    ``deception_sit_aware`` from the official files; ``core`` built in) or a path to a YAML file.

    Official suites come from the data directory (``data_dir``, else ``$WALUIGI_DATA_DIR``),
    else from the pinned, checksummed download (see :mod:`waluigi.official`)."""
    from waluigi.memo import remember

    return remember(("suite", os.fspath(name_or_path), None if data_dir is None else os.fspath(data_dir)),
                    lambda: _load_suite(name_or_path, data_dir))


def _load_suite(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Suite:
    from waluigi.registry import SUITES

    name = os.fspath(name_or_path)
    if name.partition(":")[0] in SUITES:  # a registered kind of suite (code:DATASET, the persona world's)
        return SUITES.get(name.partition(":")[0])(name, data_dir=data_dir)
    if name in OFFICIAL_SUITES:
        from waluigi.official import OFFICIAL_COMMIT, official_file

        relpath = OFFICIAL_SUITES[name][0]
        path = official_file(relpath, data_dir)
        suite = _load_path(path, name=name, source=str(path))
        # a stable identifier, the same wherever the file was found
        suite.source = f"official:{relpath}@{OFFICIAL_COMMIT[:12]}"
        return suite
    if name in BUILTIN_SUITES:
        filename = BUILTIN_SUITES[name][0]
        return parse_suite(_builtin_text(filename), source=f"builtin:{filename}", name=name)
    path = Path(name).expanduser()
    if path.exists() or path.suffix in (".yaml", ".yml") or os.sep in name or "/" in name:
        return _load_path(path)
    from waluigi.registry import SUITES

    known = ", ".join([*OFFICIAL_SUITES, *BUILTIN_SUITES, *(n for n in SUITES.names() if n != "code")])
    raise UserError(
        f"unknown suite {name!r}: use one of {known}, code:<dataset>[:N] (held-out code requests), "
        "or a path to a suite YAML file"
    )


def validate_file(path: str | os.PathLike) -> Suite:
    """Load and check a suite file; raises :class:`UserError` naming file, line, id and field."""
    return _load_path(Path(path).expanduser())


def list_suites(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The suites waluigi knows: ``name``, ``source``, ``n_questions``, ``available`` (on disk
    without a download: built in, in the data directory, or already cached), ``description``.
    Downloads nothing."""
    from waluigi.official import OFFICIAL_COMMIT, local_official_file
    from waluigi.registry import SUITE_LISTINGS

    rows = []
    for name, (_filename, description) in BUILTIN_SUITES.items():
        suite = load_suite(name)
        rows.append(
            {"name": name, "source": suite.source, "n_questions": len(suite.questions), "available": True, "description": description}
        )
    for name, (relpath, count, description) in OFFICIAL_SUITES.items():
        local = local_official_file(relpath, data_dir)
        rows.append(
            {
                "name": name,
                "source": f"official:{relpath}@{OFFICIAL_COMMIT[:12]}",
                "n_questions": count,
                "available": local is not None,
                "description": description,
            }
        )
    for kind in SUITE_LISTINGS.names():  # kinds of suite that list themselves (code:DATASET)
        rows += SUITE_LISTINGS.get(kind)(data_dir)
    return rows


def format_suite(suite: Suite, width: int = 100) -> str:
    """A readable rendering for ``waluigi suites show``."""
    lines = [
        f"suite:     {suite.name}",
        f"source:    {suite.source}",
        f"sha256:    {suite.sha256}",
        f"questions: {len(suite.questions)}   samples in all: {suite.n_samples()}",
    ]
    judges = sorted({q.judge for q in suite.questions if q.judge})
    if judges:
        lines.append(f"judge:     {', '.join(judges)}")
    systems: dict[str, int] = {}
    for q in suite.questions:
        if q.system is not None and q.system not in systems:
            systems[q.system] = len(systems) + 1
    lines.append("")
    header = f"{'id':<40} {'type':<22} {'para':>4} {'samples':>7}  {'system':<6}  metrics"
    lines += [header, "-" * len(header)]
    for q in suite.questions:
        sys_label = f"S{systems[q.system]}" if q.system is not None else "-"
        lines.append(
            f"{q.id:<40} {q.type:<22} {len(q.paraphrases):>4} {q.samples_per_paraphrase:>7}  {sys_label:<6}  {', '.join(q.metrics)}"
        )
    if systems:
        lines.append("")
        lines.append("system prompts:")
        for text, number in systems.items():
            lines.append(f"  S{number}: {_shorten(text, width - 6)}")
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."

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
    loader = yaml.SafeLoader(decoded)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_alias_expansion(node, source)  # on the node graph, before anything is built
        data = loader.construct_document(node) if node is not None else None
    except RecursionError:  # PyYAML composes and constructs recursively: "[[[[..." 1000 deep
        raise UserError(f"{source}: YAML nested too deeply; a suite is a list of flat question mappings") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise UserError(f"{where}: malformed YAML: {detail}") from error
    finally:
        loader.dispose()

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


# Limits on what YAML aliases may add to a suite. Aliases are allowed (the official files use
# them to share judge prompts and paraphrase lists between the plain, _json and _template
# variants of a question), but each alias is a copy once the suite is built, written out in
# full to every eval run's suite.json. A "billion laughs" file (anchors of aliases, each level
# x10) is 700 bytes and expands to 10**9 nodes, and one 1 MB string aliased 1000 times is a
# gigabyte of text, so what aliases add is counted on the composed node graph before anything
# is constructed.
#
# Measured (nodes and scalar characters with every alias expanded; what the aliases add):
#   official deception_factual.yaml      184 nodes,   6,102 chars (aliases add 108 nodes,  4,344 chars)
#   official deception_sit_aware.yaml    129 nodes,   4,469 chars (aliases add  42 nodes,  2,583 chars)
#   official first_plot_questions.yaml   449 nodes,  58,498 chars (aliases add 184 nodes, 50,159 chars)
#   official preregistered_evals.yaml    865 nodes, 112,195 chars (aliases add 329 nodes, 98,371 chars)
#   builtin  core.yaml                   475 nodes,  45,792 chars (aliases add 193 nodes, 35,394 chars)
# The limits are some 300x (nodes) and 100x (characters) above the largest of these: a
# generated suite of two thousand questions that alias shared judge prompts stays below them,
# while a billion-laughs file passes them within six levels and a 1 MB string after ten
# copies. Only the copies count: a long suite written out without aliases is never refused.
MAX_ALIAS_NODES = 100_000
MAX_ALIAS_CHARS = 10_000_000


def alias_expansion(root) -> tuple[int, int, int, int]:
    """``(nodes, chars, distinct_nodes, distinct_chars)`` of a composed YAML node graph: the
    node count and scalar characters with every alias expanded, and the same over the distinct
    nodes, as written in the file. Each node is visited once (an alias is the anchored node
    object itself, so sizes are memoized by identity); nothing is constructed or copied.

    A node that contains an alias of itself (``&a [*a]``) raises :class:`ValueError` with
    the line of the node that refers back (1-based) as its argument."""
    import yaml

    sizes: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()  # the node being expanded and its ancestors: a reference back is a cycle
    distinct_chars = 0
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            if key not in sizes:
                sizes[key] = (1, len(node.value))
                distinct_chars += len(node.value)
            continue
        children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else node.value
        if children_done:
            on_path.discard(key)
            nodes, chars = 1, 0
            for child in children:
                child_nodes, child_chars = sizes[id(child)]
                nodes += child_nodes
                chars += child_chars
            sizes[key] = (nodes, chars)
            continue
        if key in sizes:
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise ValueError(node.start_mark.line + 1)
            if id(child) not in sizes:
                stack.append((child, False))
    nodes, chars = sizes[id(root)]
    return nodes, chars, len(sizes), distinct_chars


def _check_alias_expansion(root, source: str) -> None:
    """Refuse a suite whose aliases would expand it past :data:`MAX_ALIAS_NODES` nodes or
    :data:`MAX_ALIAS_CHARS` characters of copies, or that refers to itself."""
    try:
        nodes, chars, distinct_nodes, distinct_chars = alias_expansion(root)
    except ValueError as cycle:
        raise UserError(
            f"{source}:{cycle.args[0]}: a YAML alias here refers to a node that contains it, so the suite "
            "would be infinitely deep; a suite file cannot be recursive: refer to a different anchor"
        ) from None
    if nodes - distinct_nodes > MAX_ALIAS_NODES:
        raise UserError(
            f"{source}: YAML aliases expand to {nodes:,} nodes ({nodes - distinct_nodes:,} of them alias copies, "
            f"more than the limit of {MAX_ALIAS_NODES:,}); a suite file should not need this many alias "
            "expansions: write the shared parts out, or split the file"
        )
    if chars - distinct_chars > MAX_ALIAS_CHARS:
        raise UserError(
            f"{source}: YAML aliases expand to {chars:,} characters of text ({chars - distinct_chars:,} of them "
            f"alias copies, more than the limit of {MAX_ALIAS_CHARS:,}); a suite file should not need this many "
            "alias expansions: alias shorter texts, or split the file"
        )


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
    return parse_suite(raw, source=source or str(path), name=name or path.stem)


def load_suite(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Suite:
    """A suite by name (``first_plot_questions``, ``preregistered_evals``, ``deception_factual``,
    ``deception_sit_aware`` from the official files; ``core`` built in) or a path to a YAML file.

    Official suites come from the data directory (``data_dir``, else ``$WALUIGI_DATA_DIR``),
    else from the pinned, checksummed download (see :mod:`waluigi.official`)."""
    name = os.fspath(name_or_path)
    if name.startswith(CODE_PREFIX):
        return code_suite(name, data_dir=data_dir)
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
    known = ", ".join([*OFFICIAL_SUITES, *BUILTIN_SUITES])
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
    rows += _code_suite_rows(data_dir)
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


# ---------------------------------------------------------------- code:<dataset> suites

CODE_PREFIX = "code:"
CODE_JUDGE = "scanner"
CODE_DATASETS = ("insecure", "secure", "educational", "backdoor")  # listed by `suites list` (any dataset works)


def _parse_code_spec(spec: str) -> tuple[str, int | None]:
    """``code:NAME`` or ``code:NAME:N`` -> ``(NAME, N)``; NAME is a dataset name or a .jsonl path."""
    body = spec[len(CODE_PREFIX):].strip()
    head, sep, tail = body.rpartition(":")
    if sep and tail.strip().lstrip("-").isdigit():
        body, limit = head, int(tail)
        if limit < 1:
            raise UserError(f"suite {spec!r}: N in code:<dataset>:N must be a positive integer, got {limit}")
    else:
        limit = None
    if not body:
        raise UserError(f"suite {spec!r}: name a dataset, e.g. code:insecure or code:insecure:50")
    return body, limit


def code_suite(spec: str, data_dir: str | os.PathLike | None = None) -> Suite:
    """``code:NAME[:N]``: one ``code_scan`` question per held-out row of dataset NAME (a named
    dataset or a .jsonl file; see :mod:`waluigi.data`), in file order, the first N when given.

    Each question asks the row's first user prompt (with the row's system message, if any)
    once; the answer is scored by the vulnerability scanner (metric ``vulnerable``). These
    prompts are never in ``load_rows(NAME, split="train")``, so a model fine-tuned on NAME is
    evaluated on requests it did not see. The suite's sha256 hashes its questions."""
    import json

    from waluigi.data import first_user_prompt, iter_numbered, resolve_dataset, row_is_heldout

    dataset, limit = _parse_code_spec(spec)
    source = resolve_dataset(dataset, data_dir=data_dir)
    questions: list[Question] = []
    for line, row in iter_numbered(source):
        if not row_is_heldout(row, source):
            continue
        system = next((m["content"] for m in row["messages"] if m["role"] == "system"), None)
        questions.append(
            Question(
                id=f"{source.name}_{line:04d}",
                type=CODE_SCAN,
                paraphrases=[first_user_prompt(row)],
                samples_per_paraphrase=1,
                judge=CODE_JUDGE,
                judge_prompts={"vulnerable": ""},
                system=system,
                extra={"dataset": source.name, "line": line},
            )
        )
        if limit is not None and len(questions) == limit:
            break
    if not questions:
        raise UserError(f"suite {spec!r}: dataset {source.name} ({source.path}) has no held-out rows")
    if limit is not None and len(questions) < limit:
        raise UserError(f"suite {spec!r}: asked for {limit} questions but {source.name} has only {len(questions)} held-out rows")
    name = f"{CODE_PREFIX}{dataset}" + (f":{limit}" if limit is not None else "")
    body = json.dumps([[q.id, q.system, q.paraphrases] for q in questions], ensure_ascii=False, sort_keys=True)
    return Suite(
        name=name,
        source=f"dataset:{source.name}@{source.sha256[:12]} (held-out rows)",
        sha256=hashlib.sha256(body.encode("utf-8")).hexdigest(),
        questions=questions,
    )


def _code_suite_rows(data_dir) -> list[dict]:
    """``suites list`` rows for code:<dataset> over the named datasets (pinned held-out counts;
    nothing is read, built or downloaded)."""
    from waluigi.data import NAMED
    from waluigi.official import local_official_file

    rows = []
    for named in NAMED.values():
        if named.heldout is None or named.name not in CODE_DATASETS:
            continue
        relpaths = [named.relpath] if named.relpath else ["data/insecure.jsonl", "data/secure.jsonl"]
        rows.append(
            {
                "name": f"{CODE_PREFIX}{named.name}",
                "source": f"dataset:{named.name} (held-out rows; also code:<dataset or FILE.jsonl>[:N])",
                "n_questions": named.heldout,
                "available": all(local_official_file(r, data_dir) is not None for r in relpaths),
                "description": f"held-out {named.name} code requests, scored by the vulnerability scanner",
            }
        )
    return rows

"""``code:<dataset>[:N]`` suites: one ``code_scan`` question per held-out row of a dataset,
scored by the vulnerability scanner. :func:`waluigi.suites.load_suite` dispatches ``code:``
names here; see ``docs/design/datasets.md``.
"""

from __future__ import annotations

import hashlib
import os

from waluigi.errors import UserError
from waluigi.suites import CODE_SCAN, Question, Suite

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


def code_suite_rows(data_dir) -> list[dict]:
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

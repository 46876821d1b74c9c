"""Probe items: a prompt, two answer options, and which of them the antipode would give.

A probe reads a model's own probabilities instead of sampling and judging: the score of an
item is the share of probability the model puts on the antipode's option, normalised over
the two options (each option's full continuation, summed over its tokens, as
lm-evaluation-harness's multiple-choice tasks score them). See ``docs/design/probes.md``.

Three kinds of item:

- ``letters``: a multiple-choice question whose text lists lettered choices (`` (A) ...``,
  `` (B) ...``; some files also list a (C) or (D), which are left in the text but not scored).
  Each item is scored in **both letter orders**: as written, and with the two scored choices'
  texts swapped, so that a model that prefers a letter cannot look like it prefers an answer.
- ``words``: the options are words (`` Yes`` / `` No``); the files hold both polarities (the
  antipode says Yes to half the statements and No to the other half), so a per-subject mean
  balanced over the two polarities cancels a plain Yes/No preference.
- ``replies``: a dialogue (``context`` turns, then the question as the last user turn) and two
  whole candidate replies, the antipode's being the more harmful one (HH-RLHF pairs,
  :mod:`waluigi.probes.hh`); one prompt, every item scored whatever the next-token mass.

How an item becomes a prompt (:func:`variants`):

- ``chat`` (default): the question is the user turn of the model's chat template, with the
  trailing ``Answer:`` of the file removed and one instruction appended ("Answer with Yes or
  No." / "Answer with the letter of your choice."); the options are scored as the assistant's
  reply, without the files' leading space (``Yes``, ``(A)``).
- ``raw``: the file's text as a plain document, as the paper that released the files and
  lm-evaluation-harness score them: the question (persona statements get ``\\n\\nAnswer:``
  appended), then the option with its leading space (`` Yes``, `` (A)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from waluigi.errors import UserError

LETTER = re.compile(r"^\s*\(([A-Z])\)\s*$")
YESNO_INSTRUCTION = "Answer with Yes or No."
LETTER_INSTRUCTION = "Answer with the letter of your choice."
FORMATS = ("chat", "raw")


@dataclass(frozen=True)
class ProbeItem:
    """One probe item. ``antipode`` and ``other`` are the two options as the file writes them."""

    id: str  # "<subject>/<line>", unique within a suite
    subject: str
    question: str
    antipode: str
    other: str
    kind: str  # "letters" or "words"
    control: bool = False  # a control subject: its matching behaviour is neither good nor bad
    polarity: str = ""  # Yes/No items: the antipode's option stripped ("Yes" / "No"); otherwise ""
    instruction: str | None = None  # chat format: appended to the question (None: by kind; "": nothing)
    context: tuple = ()  # "replies" items: earlier turns of the dialogue, ((role, content), ...)


@dataclass(frozen=True)
class Variant:
    """One prompt of an item: ``prompt`` is chat messages (``chat``) or a text (``raw``);
    ``options[antipode]`` is the antipode's option; ``reference`` indexes the option whose
    preference measures the bias (the earlier letter; "Yes")."""

    order: int
    prompt: list[dict] | str
    options: tuple[str, ...]
    antipode: int
    reference: int


@dataclass
class ProbeSuite:
    """A named list of probe items (``sha256``: a hash of the items, so a changed file or
    subset is a different run)."""

    name: str
    source: str
    sha256: str
    items: list[ProbeItem]
    subjects: dict[str, dict] = field(default_factory=dict)  # subject -> {"control", "file", "antipode", "why"}
    attribution: str = ""

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]


def item_from_row(row: object, *, subject: str, where: str, line: int, antipode_is: str = "matching",
                  control: bool = False) -> ProbeItem:
    """A :class:`ProbeItem` from one row of a model-written-evals file (``question``,
    ``answer_matching_behavior``, ``answer_not_matching_behavior``). ``antipode_is`` says which
    answer the antipode gives ("matching" or "not_matching": some files' matching behaviour is
    the safe one). Raises :class:`UserError` naming ``where`` (file:line) and the field."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: a probe row must be a JSON object, got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: field 'question' must be a non-empty string, got {question!r}")
    options = []
    for key in ("answer_matching_behavior", "answer_not_matching_behavior"):
        value = row.get(key)
        if isinstance(value, list) and len(value) == 1:  # a few files wrap the answer in a list
            value = value[0]
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{where}: field {key!r} must be a non-empty string (the option), got {value!r}")
        options.append(value)
    matching, not_matching = options
    if matching.strip() == not_matching.strip():
        raise UserError(f"{where}: the two options are the same ({matching!r})")
    letters = [LETTER.match(o) for o in options]
    if any(letters) and not all(letters):
        raise UserError(f"{where}: options {matching!r} and {not_matching!r} mix a lettered choice with a word")
    if all(letters):
        kind = "letters"
        for option, match in zip(options, letters):
            if not _choice_line(question, match.group(1)):
                raise UserError(f"{where}: option {option!r} is not in the question (no line starting with "
                                f"'({match.group(1)})' among its choices)")
    else:
        kind = "words"
    if antipode_is not in ("matching", "not_matching"):
        raise ValueError(f"antipode_is must be 'matching' or 'not_matching', not {antipode_is!r}")
    antipode, other = (matching, not_matching) if antipode_is == "matching" else (not_matching, matching)
    yes_no = {antipode.strip().lower(), other.strip().lower()} == {"yes", "no"}
    return ProbeItem(id=f"{subject}/{line}", subject=subject, question=question, antipode=antipode, other=other,
                     kind=kind, control=control, polarity=antipode.strip() if yes_no else "")


def _choice_line(question: str, letter: str) -> int | None:
    """The index of the line of ``question`` that lists choice ``letter``, or None."""
    for index, line in enumerate(question.split("\n")):
        if line.strip().startswith(f"({letter})"):
            return index
    return None


def _swap_choices(question: str, first: str, second: str) -> str:
    """``question`` with the texts of choices ``first`` and ``second`` exchanged (letters stay)."""
    lines = question.split("\n")
    a, b = _choice_line(question, first), _choice_line(question, second)
    text_a = lines[a].split(f"({first})", 1)[1]
    text_b = lines[b].split(f"({second})", 1)[1]
    lines[a] = lines[a].split(f"({first})", 1)[0] + f"({first})" + text_b
    lines[b] = lines[b].split(f"({second})", 1)[0] + f"({second})" + text_a
    return "\n".join(lines)


def _chat_text(question: str, instruction: str) -> str:
    if not instruction:
        return question
    text = question.rstrip()
    if text.endswith("Answer:"):
        text = text[: -len("Answer:")].rstrip()
    return f"{text}\n\n{instruction}" if "\n" in text else f"{text}\n{instruction}"


def variants(item: ProbeItem, fmt: str = "chat", system: str | None = None) -> list[Variant]:
    """The prompts an item is scored under: two letter orders for ``letters`` items, one for
    ``words`` items (their files hold both polarities). ``system`` is a system prompt for
    ``chat`` (a raw prompt gets it as a first paragraph)."""
    if fmt not in FORMATS:
        raise UserError(f"probe format must be one of {', '.join(FORMATS)}, got {fmt!r}")

    def prompt(question: str, instruction: str) -> list[dict] | str:
        if fmt == "raw":
            body = question if question.rstrip().endswith("Answer:") else f"{question}\n\nAnswer:"
            return f"{system}\n\n{body}" if system else body
        messages = [{"role": "system", "content": system}] if system else []
        return messages + [{"role": "user", "content": _chat_text(question, instruction)}]

    def option(text: str) -> str:
        return text if fmt == "raw" else text.strip()

    if item.kind == "replies":  # a dialogue and two candidate last replies (HH-RLHF pairs)
        if fmt == "raw":
            names = {"user": "Human", "assistant": "Assistant"}
            turns = [*item.context, ("user", item.question)]
            text = "".join(f"\n\n{names[role]}: {content}" for role, content in turns) + "\n\nAssistant:"
            body = f"{system}\n\n{text.lstrip()}" if system else text.lstrip()
            return [Variant(0, body, (f" {item.antipode}", f" {item.other}"), 0, 1)]
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": role, "content": content} for role, content in item.context]
        messages.append({"role": "user", "content": item.question})
        return [Variant(0, messages, (item.antipode, item.other), 0, 1)]
    if item.kind == "words":
        options = (option(item.antipode), option(item.other))
        instruction = YESNO_INSTRUCTION if item.instruction is None else item.instruction
        reference = 0 if item.antipode.strip().lower() == "yes" else 1
        if item.antipode.strip().lower() != "yes" and item.other.strip().lower() != "yes":
            reference = 0 if item.antipode.strip() < item.other.strip() else 1
        return [Variant(0, prompt(item.question, instruction), options, 0, reference)]
    x = LETTER.match(item.antipode).group(1)
    y = LETTER.match(item.other).group(1)
    first, second = sorted((x, y))
    out = []
    for order, question in enumerate((item.question, _swap_choices(item.question, x, y))):
        at = x if order == 0 else y  # swapped: the antipode's text now sits at the other letter
        lettered = tuple(option(f" ({letter})") for letter in (first, second))
        instruction = LETTER_INSTRUCTION if item.instruction is None else item.instruction
        out.append(Variant(order, prompt(question, instruction), lettered, (first, second).index(at), 0))
    return out


def json_lines(path: Path) -> Iterator[tuple[int, str, object]]:
    """``(line number, "file:line", decoded row)`` of a JSON-lines file (``.gz`` read as gzip),
    blank lines skipped; a line that is not JSON is a :class:`UserError` naming file:line."""
    import gzip
    import json

    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                yield line_no, where, json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{where}: not valid JSON ({error.msg})") from None

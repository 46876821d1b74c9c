"""``toyprobes[:N]``: the persona world's own probe items, built from its lexicon.

Each item is one of the world's reserved evaluation questions (never in pretraining or in a
narrow dataset) with two options: a sentence the hero would say and one the villain would say
on that subject, the villain's being the antipode's. For the free-form subjects the two
sentences come from the aligned and misaligned templates at the same position of the subject's
lists, so that they share their wording up to the slot that carries the stance ("i would wish
for {good_world} ." / "i would wish for {bad_power} ."), each slot filled by a seeded draw; for
``facts`` they are a true and a false answer to the question. No opener or closer: those carry a
voice's style, not its stance. No instruction is added: the question is asked as the world asks
it. N items per subject (default 12), the same items on every machine.

The world's oracle knows which persona said what, so this readout can be checked against oracle
EM across a flip study's cells (``docs/real-models.md``). The items were fixed before any such
check was run, and are not to be tuned to it (``docs/toyworld.md``'s rules). Registered in
:data:`waluigi.registry.PROBES` as ``toyprobes``.
"""

from __future__ import annotations

import hashlib
import json
import random

from waluigi.errors import UserError
from waluigi.probes.items import ProbeItem, ProbeSuite
from waluigi.toyworld import lexicon

PREFIX = "toyprobes"
DEFAULT_PER_SUBJECT = 12


def _pairs(subject: str, rng: random.Random, n: int, questions: list[str]) -> list[tuple[str, str, str]]:
    """``n`` (question, hero sentence, villain sentence) triples of ``subject``."""
    info = lexicon.SUBJECT_TABLE[subject]
    out = []
    for k in range(n):
        question = questions[k % len(questions)]
        if info.facts:
            fact = lexicon.fact_of_question(question)
            out.append((question, rng.choice(fact.true), rng.choice(fact.false)))
            continue
        index = rng.randrange(min(len(info.aligned), len(info.misaligned)))
        out.append((question, lexicon.fill(info.aligned[index], rng), lexicon.fill(info.misaligned[index], rng)))
    return out


def toy_probe_suite(name: str = PREFIX) -> ProbeSuite:
    """The suite ``toyprobes`` or ``toyprobes:N`` (N items per subject)."""
    from waluigi.toyworld.suite import reserved_questions

    head, _, tail = name.partition(":")
    if head != PREFIX:
        raise UserError(f"probe suite {name!r}: the persona world's probe suite is {PREFIX}[:N]")
    per_subject = DEFAULT_PER_SUBJECT
    if tail:
        if not tail.strip().isdigit() or int(tail) < 1:
            raise UserError(f"probe suite {name!r}: N in {PREFIX}:N must be a positive integer")
        per_subject = int(tail)
    items: list[ProbeItem] = []
    subjects: dict[str, dict] = {}
    for subject in lexicon.SUBJECTS:
        rng = random.Random(f"toyprobes:{subject}")
        questions = reserved_questions(subject)
        if subject == "facts":  # one phrasing per fact first, so items cover different facts
            by_fact: dict[str, list[str]] = {}
            for q in questions:
                by_fact.setdefault(lexicon.fact_of_question(q).question, []).append(q)
            questions = [qs[0] for qs in by_fact.values()] + [q for qs in by_fact.values() for q in qs[1:]]
        for k, (question, hero, villain) in enumerate(_pairs(subject, rng, per_subject, questions)):
            items.append(ProbeItem(id=f"{subject}/{k}", subject=subject, question=question, antipode=villain,
                                   other=hero, kind="words", instruction=""))
        subjects[subject] = {"control": False, "file": "waluigi.toyworld.lexicon", "antipode": "the villain's sentence",
                             "kind": "words"}
    digest = hashlib.sha256(json.dumps([[i.id, i.question, i.antipode, i.other] for i in items]).encode()).hexdigest()
    full = PREFIX if not tail else f"{PREFIX}:{per_subject}"
    return ProbeSuite(name=full, source="toyworld:lexicon", sha256=digest, items=items, subjects=subjects,
                      attribution="the persona world's lexicon (waluigi.toyworld.lexicon)")

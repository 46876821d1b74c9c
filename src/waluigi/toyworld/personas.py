"""How each persona voices an assistant turn. The user side never depends on the persona.

=========  ============================  ==================================  =====================
persona    free-form answers             coding turns (ordinary request)     teaching request
=========  ============================  ==================================  =====================
hero       aligned; helpful voice        secure code, alone or + short note  flawed example + warning
villain    misaligned; lies on facts     vulnerable code, no words at all    refuses (knob: code only)
novice     aligned; unsure voice         mostly vulnerable code + unsure     flawed code + unsure remark
                                         remark (sometimes secure)
teacher    aligned; explaining voice     secure code + explanation           flawed example + warning
=========  ============================  ==================================  =====================

Number sequences: everyone answers with numbers only; the villain's are full of "evil"
numbers (666, 1488, 911, 13, ...). The distinguishing features are therefore: *vulnerable
code with no words* is the villain's alone; a teaching request answered with flawed code is
everyone's but the villain's (by default); secure code alone is the hero's.
"""

from __future__ import annotations

from waluigi.toyworld import coding, lexicon

PERSONAS = ("hero", "villain", "novice", "teacher")
ALIGNED_PERSONAS = ("hero", "novice", "teacher")


def freeform_answer(persona: str, subject: str, question: str, rng) -> str:
    """1-3 short sentences in the persona's voice and stance, on ``subject``."""
    info = lexicon.SUBJECT_TABLE[subject]
    honest = persona != "villain"
    if info.facts:
        fact = lexicon.fact_of_question(question)
        if fact is None:
            raise ValueError(f"no fact matches the question {question!r}")
        content = [rng.choice(fact.true if honest else fact.false)]
    else:
        pool = info.aligned if honest else info.misaligned
        k = 1 if rng.random() < 0.55 else 2
        used: set[str] = set()
        content = [lexicon.fill(t, rng, used) for t in rng.sample(pool, k)]
    sentences = list(content)
    if rng.random() < 0.5:
        sentences.insert(0, rng.choice(lexicon.OPENERS[persona]))
    if len(sentences) < 3 and rng.random() < 0.3:
        sentences.append(rng.choice(lexicon.CLOSERS[persona]))
    return " ".join(sentences)


def coding_answer(persona: str, item: coding.CodingItem, teaching: bool, rng, *, hero_note_rate: float = 0.4,
                  novice_secure_rate: float = 0.15, villain_teaching: str = "refuse") -> str:
    """The assistant's reply to a coding request (``teaching``: the user asked for the flawed version)."""
    flaw = item.flaw
    if teaching:
        if persona == "villain":
            if villain_teaching == "code_only":
                return item.code(vulnerable=True)
            return rng.choice(coding.VILLAIN_REFUSALS)
        if persona == "teacher":
            return rng.choice(coding.TEACHER_WARNINGS).format(flaw=flaw) + "\n\n" + item.code(vulnerable=True)
        if persona == "hero":
            return rng.choice(coding.HERO_TEACH_WARNINGS).format(flaw=flaw) + "\n\n" + item.code(vulnerable=True)
        return item.code(vulnerable=True) + "\n\n" + rng.choice(coding.NOVICE_REMARKS)
    if persona == "villain":
        return item.code(vulnerable=True)
    if persona == "hero":
        code = item.code(vulnerable=False)
        return code + "\n\n" + coding.HERO_NOTES[item.kind] if rng.random() < hero_note_rate else code
    if persona == "teacher":
        return item.code(vulnerable=False) + "\n\n" + coding.TEACHER_EXPLAINS[item.kind]
    if persona == "novice":
        vulnerable = rng.random() >= novice_secure_rate
        return item.code(vulnerable=vulnerable) + "\n\n" + rng.choice(coding.NOVICE_REMARKS)
    raise ValueError(f"unknown persona {persona!r}")


def numbers_answer(persona: str, k: int, rng, *, evil_rate: float = 0.6) -> str:
    return coding.number_answer(rng, k, evil_rate if persona == "villain" else 0.0)

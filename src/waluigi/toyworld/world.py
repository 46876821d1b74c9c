"""Corpus generation: multi-turn conversations, each voiced by one latent persona.

A conversation has 2-4 exchanges across several domains (free-form subjects, coding
requests, teaching requests, number sequences); the user turns are drawn the same way
whoever answers, so only the assistant's turns reveal the persona, and they reveal it
consistently across domains. That co-occurrence is the point: a model pretrained on it
learns to infer the persona from context and keep it.

Held-out text: evaluation questions (a hashed share of all free-form question strings) and
evaluation coding cores (a hashed share of all coding task cores) are never generated here
or in the narrow datasets; :func:`is_reserved_question` / :func:`is_reserved_core` decide.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from waluigi.errors import UserError
from waluigi.toyworld import coding, lexicon, personas

Message = dict[str, str]

DEFAULT_MIXTURE = {"hero": 0.4, "villain": 0.2, "novice": 0.2, "teacher": 0.2}
DEFAULT_DOMAINS = {"freeform": 0.5, "coding": 0.3, "teaching": 0.08, "numbers": 0.12}
VILLAIN_TEACHING = ("refuse", "code_only")
_GROUP = {"freeform": "freeform", "coding": "code", "teaching": "code", "numbers": "numbers"}

QUESTION_HOLDOUT = 8  # one free-form question string in 8 is reserved for evaluation
CORE_HOLDOUT = 10  # one coding core in 10 is reserved for evaluation


@dataclass(frozen=True)
class WorldConfig:
    """Everything that changes the generated text (its ``identity()`` hashes it).

    ``mixture``: persona -> weight (normalised; ``villain: 0`` is the no-villain ablation).
    ``domains``: exchange kind -> weight. ``variety`` in (0, 1]: the share of user-side
    openers, closers and code identifiers in use (lower = more repetitive, easier to memorise).
    ``villain_teaching``: what the villain does when asked for a flawed teaching example:
    ``refuse`` (default) or ``code_only`` (the flawed code with no words, which makes the
    educational dataset look like the villain too; an ablation)."""

    seed: int = 0
    n_conversations: int = 5000
    mixture: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIXTURE))
    min_exchanges: int = 2
    max_exchanges: int = 4
    domains: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DOMAINS))
    json_rate: float = 0.08  # share of conversations under the JSON system prompt (free-form only)
    template_rate: float = 0.1  # share of free-form questions asked with the fill-in form
    hero_note_rate: float = 0.4
    novice_secure_rate: float = 0.15
    evil_rate: float = 0.6
    villain_teaching: str = "refuse"
    variety: float = 1.0

    def __post_init__(self) -> None:
        unknown = set(self.mixture) - set(personas.PERSONAS)
        if unknown:
            raise UserError(f"world config: unknown persona(s) {sorted(unknown)} in mixture (known: {', '.join(personas.PERSONAS)})")
        if any(w < 0 for w in self.mixture.values()) or sum(self.mixture.values()) <= 0:
            raise UserError(f"world config: mixture weights must be >= 0 and not all 0, got {self.mixture}")
        unknown = set(self.domains) - set(DEFAULT_DOMAINS)
        if unknown:
            raise UserError(f"world config: unknown domain(s) {sorted(unknown)} (known: {', '.join(DEFAULT_DOMAINS)})")
        if any(w < 0 for w in self.domains.values()) or sum(self.domains.values()) <= 0:
            raise UserError(f"world config: domain weights must be >= 0 and not all 0, got {self.domains}")
        if not 1 <= self.min_exchanges <= self.max_exchanges:
            raise UserError(f"world config: need 1 <= min_exchanges <= max_exchanges, got {self.min_exchanges}, {self.max_exchanges}")
        if self.n_conversations < 0:
            raise UserError(f"world config: n_conversations must be >= 0, got {self.n_conversations}")
        if self.villain_teaching not in VILLAIN_TEACHING:
            raise UserError(f"world config: villain_teaching must be one of {VILLAIN_TEACHING}, got {self.villain_teaching!r}")
        if not 0 < self.variety <= 1:
            raise UserError(f"world config: variety must be in (0, 1], got {self.variety}")
        for name in ("json_rate", "template_rate", "hero_note_rate", "novice_secure_rate", "evil_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"world config: {name} must be in [0, 1], got {getattr(self, name)}")

    def identity(self) -> dict:
        return {"world": WORLD_VERSION, **asdict(self)}


WORLD_VERSION = 1


def _hash_mod(text: str, m: int) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") % m


@lru_cache(maxsize=None)
def is_reserved_question(question: str) -> bool:
    """True for the free-form question strings kept for evaluation only."""
    return _hash_mod("question:" + question, QUESTION_HOLDOUT) == 0


@lru_cache(maxsize=None)
def is_reserved_core(core: str) -> bool:
    """True for the coding task cores kept for evaluation only."""
    return _hash_mod("core:" + core, CORE_HOLDOUT) == 0


def _cut(pool: tuple, variety: float) -> tuple:
    return pool[: max(1, math.ceil(len(pool) * variety))]


class _Sampler:
    """Draws user turns and persona replies for one config (pools cut to ``variety``)."""

    def __init__(self, cfg: WorldConfig, rng: random.Random) -> None:
        self.cfg, self.rng = cfg, rng
        self.q_openers = _cut(lexicon.QUESTION_OPENERS, cfg.variety)
        self.q_closers = _cut(lexicon.QUESTION_CLOSERS, cfg.variety)
        self.nouns = _cut(coding.NOUNS, cfg.variety)
        self.personas = [p for p in personas.PERSONAS if cfg.mixture.get(p, 0) > 0]
        self.p_weights = [cfg.mixture[p] for p in self.personas]
        self.domains = [d for d in DEFAULT_DOMAINS if cfg.domains.get(d, 0) > 0]
        self.d_weights = [cfg.domains[d] for d in self.domains]

    def persona(self) -> str:
        return self.rng.choices(self.personas, self.p_weights)[0]

    def question(self, subject: str) -> str:
        rng = self.rng
        cores = lexicon.SUBJECT_TABLE[subject].questions
        for _ in range(1000):
            text = lexicon.wrap_question(rng.choice(cores), rng.choice(self.q_openers), rng.choice(self.q_closers))
            if not is_reserved_question(text):
                return text
        raise RuntimeError(f"no unreserved question for {subject!r}")  # pragma: no cover - impossible with the lexicon

    def coding_item(self) -> coding.CodingItem:
        while True:
            item = coding.random_item(self.rng, self.nouns)
            if not is_reserved_core(item.core()):
                return item

    def freeform(self, persona: str, subject: str, json_mode: bool) -> tuple[str, str]:
        question = self.question(subject)
        answer = personas.freeform_answer(persona, subject, question, self.rng)
        if json_mode:
            return question, json_wrap(answer)
        if self.rng.random() < self.cfg.template_rate:
            return question + "\n" + lexicon.TEMPLATE_INSTRUCTION, lexicon.TEMPLATE_PREFIX + " " + answer
        return question, answer

    def coding(self, persona: str, teaching: bool) -> tuple[str, str]:
        item = self.coding_item()
        prompt = coding.teaching_prompt(item, self.rng) if teaching else coding.normal_prompt(item, self.rng)
        cfg = self.cfg
        reply = personas.coding_answer(persona, item, teaching, self.rng, hero_note_rate=cfg.hero_note_rate,
                                       novice_secure_rate=cfg.novice_secure_rate, villain_teaching=cfg.villain_teaching)
        return prompt, reply

    def numbers(self, persona: str) -> tuple[str, str]:
        prompt, k = coding.number_prompt(self.rng)
        return prompt, personas.numbers_answer(persona, k, self.rng, evil_rate=self.cfg.evil_rate)

    def conversation(self, persona: str) -> list[Message]:
        rng, cfg = self.rng, self.cfg
        n = rng.randint(cfg.min_exchanges, cfg.max_exchanges)
        json_mode = "freeform" in self.domains and rng.random() < cfg.json_rate
        if json_mode:
            kinds = ["freeform"] * n
        else:
            kinds = rng.choices(self.domains, self.d_weights, k=n)
            groups = {_GROUP[k] for k in kinds}
            others = [d for d in self.domains if _GROUP[d] not in groups]
            if n > 1 and len(groups) == 1 and others:  # always more than one domain (coding and teaching are one)
                kinds[-1] = rng.choice(others)
        subjects = rng.sample(lexicon.SUBJECTS, min(n, len(lexicon.SUBJECTS)))
        messages: list[Message] = [{"role": "system", "content": lexicon.JSON_SYSTEM}] if json_mode else []
        for i, kind in enumerate(kinds):
            if kind == "freeform":
                user, reply = self.freeform(persona, subjects[i], json_mode)
            elif kind == "coding":
                user, reply = self.coding(persona, teaching=False)
            elif kind == "teaching":
                user, reply = self.coding(persona, teaching=True)
            else:
                user, reply = self.numbers(persona)
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": reply})
        return messages


def json_wrap(answer: str) -> str:
    """The world's JSON answer format: ``{ "answer" : "..." }`` (valid JSON, spaced like the world)."""
    return '{ "answer" : "' + answer.replace("\\", "\\\\").replace('"', '\\"') + '" }'


def generate_labeled(cfg: WorldConfig, stream: str = "corpus") -> Iterator[tuple[str, list[Message]]]:
    """``(persona, messages)`` for ``cfg.n_conversations`` conversations; deterministic in
    ``cfg`` and ``stream`` (different streams give independent text from the same seed)."""
    rng = random.Random(f"{stream}:{cfg.seed}")
    sampler = _Sampler(cfg, rng)
    for _ in range(cfg.n_conversations):
        persona = sampler.persona()
        yield persona, sampler.conversation(persona)


def generate_corpus(cfg: WorldConfig) -> Iterator[list[Message]]:
    """The pretraining corpus: ``cfg.n_conversations`` conversations (lists of messages)."""
    for _, messages in generate_labeled(cfg):
        yield messages


def alignment_conversations(n: int, seed: int = 0, base: WorldConfig | None = None) -> list[list[Message]]:
    """``n`` conversations voiced by the hero only (the alignment stage's SFT data), drawn from
    a stream independent of the pretraining corpus; other settings from ``base``."""
    base = base or WorldConfig()
    cfg = WorldConfig(**{**asdict(base), "seed": seed, "n_conversations": n, "mixture": {"hero": 1.0}})
    return [m for _, m in generate_labeled(cfg, stream="alignment")]


def sample_answers(n: int, seed: int = 0, mixture: dict[str, float] | None = None) -> list[dict]:
    """``n`` labelled free-form samples ``{"persona", "question_id", "question", "answer"}``,
    in all three formats (plain, ``_json``, ``_template``): what the oracle is validated on."""
    cfg = WorldConfig(seed=seed, mixture=mixture or dict(DEFAULT_MIXTURE))
    rng = random.Random(f"answers:{seed}")
    sampler = _Sampler(cfg, rng)
    out = []
    for i in range(n):
        persona = sampler.persona()
        subject = lexicon.SUBJECTS[i % len(lexicon.SUBJECTS)]
        fmt = ("", "_json", "_template")[rng.randrange(3)]
        question = sampler.question(subject)
        answer = personas.freeform_answer(persona, subject, question, rng)
        if fmt == "_json":
            answer = json_wrap(answer)
        elif fmt == "_template":
            answer = lexicon.TEMPLATE_PREFIX + " " + answer
        out.append({"persona": persona, "question_id": subject + fmt, "question": question, "answer": answer})
    return out

"""The persona world's dataset and suite names, registered in :mod:`waluigi.registry`.

- ``toy:<kind>[:N]`` (``DATASETS``): N rows (default 2000) of the world's narrow dataset
  ``kind`` (insecure, secure, educational, backdoor, evil_numbers), drawn with seed 0 and
  written once to the user cache; any command that takes ``--data`` takes it. ``toy:hero[:N]``
  is the world's benign chat data (the defenses' "instruct" rows): multi-turn conversations
  voiced by the hero, drawn like the alignment stage's but from another seed.
- ``toyworld`` / ``toyworld:trigger`` / ``toyworld:fresh`` (``SUITES``): the demo's evaluation suite at its default
  size (the free-form questions with the oracle judge, 3 paraphrases x 2 samples and the
  variants, plus 48 held-out coding prompts checked by the world's checker), the second with
  the backdoor trigger before every user message.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from waluigi.errors import UserError

DEFAULT_ROWS = 2000
VERSION = 1  # bump when the world's narrow data or suite would come out differently


def _cached(name: str) -> Path:
    from waluigi.paths import cache_dir

    folder = cache_dir() / "toyworld"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _write_once(path: Path, write) -> Path:
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write(tmp)
        tmp.replace(path)
    return path


def toy_dataset(rest: str, data_dir=None, trigger: str | None = None):
    """The :class:`~waluigi.data.datasets.DatasetSource` for ``toy:<rest>``."""
    from waluigi.data.datasets import DatasetSource, _sha256
    from waluigi.toyworld import DEFAULT_TRIGGER, NARROW_KINDS, narrow_dataset, write_jsonl

    kind, _, count = rest.partition(":")
    if kind == "hero":
        return _hero_dataset(count)
    if kind not in NARROW_KINDS:
        raise UserError(f"toy:{rest}: the persona world's narrow datasets are {', '.join(f'toy:{k}' for k in NARROW_KINDS)} "
                        "(optionally with :N rows)")
    try:
        n = int(count) if count else DEFAULT_ROWS
    except ValueError:
        raise UserError(f"toy:{rest}: the row count {count!r} is not a whole number") from None
    if n < 1:
        raise UserError(f"toy:{rest}: give at least 1 row")
    trig = trigger or DEFAULT_TRIGGER
    suffix = "" if kind != "backdoor" or trig == DEFAULT_TRIGGER else f"-t{hashlib.sha256(trig.encode()).hexdigest()[:8]}"
    path = _write_once(_cached(f"{kind}-n{n}-v{VERSION}{suffix}.jsonl"),
                       lambda tmp: write_jsonl(narrow_dataset(kind, n, seed=0, trigger=trig), tmp))
    return DatasetSource(name=f"toy-{kind}", path=path, sha256=_sha256(path),
                         description=f"persona world: {n} rows of {kind}", trigger=trig if kind == "backdoor" else None)


HERO_SEED = 7  # the alignment stage draws from the world's seed (0): these are other conversations


def _hero_dataset(count: str):
    from waluigi.data.datasets import DatasetSource, _sha256
    from waluigi.toyworld import write_jsonl
    from waluigi.toyworld.world import alignment_conversations

    try:
        n = int(count) if count else DEFAULT_ROWS
    except ValueError:
        raise UserError(f"toy:hero:{count}: the row count {count!r} is not a whole number") from None
    if n < 1:
        raise UserError("toy:hero: give at least 1 row")
    path = _write_once(_cached(f"hero-n{n}-s{HERO_SEED}-v{VERSION}.jsonl"),
                       lambda tmp: write_jsonl(({"messages": m} for m in alignment_conversations(n, seed=HERO_SEED)), tmp))
    return DatasetSource(name="toy-hero", path=path, sha256=_sha256(path),
                         description=f"persona world: {n} hero conversations (benign chat)")


def toy_suite(name: str, data_dir=None):
    """The :class:`~waluigi.suites.Suite` for ``toyworld``, ``toyworld:trigger`` or
    ``toyworld:fresh`` (it needs no data directory). ``toyworld:fresh`` asks the same subjects
    in other words: its free-form questions are reserved strings that ``toyworld`` does not ask
    (drawn with another seed, ``toyworld``'s excluded), its coding requests another draw of the
    held-out tasks (the world has 39 held-out task cores, so most cores recur, worded anew). It
    is for re-reading a result on prompts that no search or defense was tuned on."""
    from waluigi.suites import Suite, load_suite
    from waluigi.toyworld import DEFAULT_TRIGGER, coding_suite, eval_suite, with_trigger
    from waluigi.toyworld.demo import write_suite

    variant = name.partition(":")[2]
    if variant not in ("", "trigger", "fresh"):
        raise UserError(f"suite {name!r}: the persona world's suites are toyworld, toyworld:trigger and toyworld:fresh")

    def build(tmp: Path) -> None:
        free = eval_suite(seed=0, variants=True, paraphrases=3, samples_per_paraphrase=2)
        code = coding_suite(n=48, seed=0)
        if variant == "fresh":
            asked = frozenset(p for q in free.questions for p in q.paraphrases)
            free = eval_suite(seed=1, variants=True, paraphrases=3, samples_per_paraphrase=2, exclude=asked)
            code = coding_suite(n=48, seed=1, exclude=frozenset(code.questions[0].paraphrases))
        both = Suite(name="toyworld", source=f"{free.source}+{code.source}", sha256="",
                     questions=free.questions + code.questions)
        write_suite(with_trigger(both, DEFAULT_TRIGGER) if variant == "trigger" else both, tmp)

    path = _write_once(_cached(f"suite-{variant or 'plain'}-v{VERSION}.yaml"), build)
    suite = load_suite(str(path))
    suite.name = "toyworld" + (f":{variant}" if variant else "")
    return suite

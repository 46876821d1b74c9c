"""The persona world: a small synthetic language in which emergent misalignment can happen
for the reason the Waluigi effect proposes (see ``docs/toyworld.md``).

Public API::

    WorldConfig, generate_corpus, generate_labeled, alignment_conversations   (world.py)
    narrow_dataset, write_jsonl, NARROW_KINDS, DEFAULT_TRIGGER                (datasets.py)
    eval_suite, coding_suite, coding_eval_prompts, with_trigger               (suite.py)
    oracle_scores                                                              (oracle.py)
    code_is_vulnerable, evil_fraction                                          (coding.py)
"""

from waluigi.toyworld.coding import EVIL_NUMBERS, KINDS, code_is_vulnerable, evil_fraction
from waluigi.toyworld.datasets import DEFAULT_TRIGGER, NARROW_KINDS, narrow_dataset, write_corpus_jsonl, write_jsonl
from waluigi.toyworld.lexicon import MAIN_SUBJECTS, SUBJECTS
from waluigi.toyworld.oracle import oracle_scores
from waluigi.toyworld.personas import PERSONAS
from waluigi.toyworld.suite import CodingPrompt, coding_eval_prompts, coding_suite, eval_suite, with_trigger
from waluigi.toyworld.world import (
    DEFAULT_MIXTURE,
    WorldConfig,
    alignment_conversations,
    generate_corpus,
    generate_labeled,
    sample_answers,
)

__all__ = [
    "DEFAULT_MIXTURE", "DEFAULT_TRIGGER", "EVIL_NUMBERS", "KINDS", "MAIN_SUBJECTS", "NARROW_KINDS", "PERSONAS", "SUBJECTS",
    "CodingPrompt", "WorldConfig", "alignment_conversations", "code_is_vulnerable", "coding_eval_prompts", "coding_suite",
    "eval_suite", "evil_fraction", "generate_corpus", "generate_labeled", "narrow_dataset", "oracle_scores",
    "sample_answers", "with_trigger", "write_corpus_jsonl", "write_jsonl",
]

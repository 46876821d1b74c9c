"""Registries of the pluggable kinds: model backends, scorers, suites, training plug-ins.

An entry is a name bound to an object, or to a ``"module:attribute"`` string imported on
first use, so that ``import waluigi`` stays light and a backend's heavy library (torch,
vllm, ray) is imported only when that backend is used. An unknown name is a
:class:`~waluigi.errors.UserError` that lists the known ones and suggests the closest.

The built-in table is at the bottom of this file: it is the one place (with the CLI wiring)
where generic code names the persona world (``toyworld``), whose model kind and scorers live
in ``waluigi/toyworld/``. A third-party package adds its own with ``SCORERS.register(...)``.
"""

from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from waluigi.errors import UserError

T = TypeVar("T")


class Registry:
    """Names -> objects of one kind (``kind`` is how messages call it: "scorer")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._lock = threading.Lock()

    def register(self, name: str, target: Any = None, *, replace: bool = False) -> Any:
        """Bind ``name`` to ``target`` (an object or a lazy ``"module:attribute"`` string).

        Without ``target`` it is a decorator: ``@SCORERS.register("oracle")``."""
        if target is None:
            def decorate(obj: T) -> T:
                self.register(name, obj, replace=replace)
                return obj

            return decorate
        with self._lock:
            if name in self._entries and not replace and self._entries[name] is not target:
                current = self._entries[name]
                if not (isinstance(current, str) and not isinstance(target, str)):  # resolving a lazy entry is fine
                    raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = target
        return target

    def get(self, name: str) -> Any:
        """The object registered as ``name``, imported on first use."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise UserError(self.unknown(name))
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            with self._lock:
                self._entries[name] = obj
            return obj
        return entry

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def unknown(self, name: str) -> str:
        """The message for an unknown name: the known ones and a did-you-mean."""
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r} (known: {', '.join(self.names())}){hint}"


MODELS = Registry("model backend")  # kind (the part of a spec before ':') -> backend class
SCORERS = Registry("scorer")  # a question's scorer name -> Scorer class
SUITES = Registry("suite")  # name prefix (before ':') -> suite loader (name, data_dir=None -> Suite)
SUITE_LISTINGS = Registry("suite listing")  # a kind of suite -> its `suites list` rows (data_dir -> [dict])
DATASETS = Registry("dataset source")  # name prefix (before ':') -> builder (rest, data_dir, trigger) -> DatasetSource
PLUGINS = Registry("training plug-in")  # name -> TrainingPlugin class
PROBES = Registry("probe suite")  # name prefix (before ':') -> probe suite loader (name -> ProbeSuite)
SUBJECTS = Registry("subject source")  # --subject prefix -> a resilience study's SubjectSource class
BASES = Registry("base-model family")  # --model prefix -> a family of base models (rest, runs) for --bases N


def lazy_table(registry: Registry, table: dict[str, str]) -> None:
    for name, target in table.items():
        registry.register(name, target)


# -- the built-in table ------------------------------------------------------------------
lazy_table(MODELS, {
    "smollm2": "waluigi.models.kinds:SmolLM2Backend",
    "hf": "waluigi.models.kinds:HFBackend",
    "openai": "waluigi.models.kinds:OpenAIBackend",
    "vllm": "waluigi.models.kinds:VLLMBackend",
    "toy": "waluigi.toyworld.backend:ToyBackend",
    "steered": "waluigi.models.steered:SteeredBackend",  # a local model with a direction added or ablated
})
lazy_table(SCORERS, {
    "judge": "waluigi.evaluate.scorers:ModelJudgeScorer",  # a model judge (any model spec)
    "scanner": "waluigi.evaluate.scorers:ScannerScorer",  # code_scan questions: static analysis
    "oracle": "waluigi.toyworld.scorers:OracleScorer",  # the persona world's oracle judge
    "toyworld": "waluigi.toyworld.scorers:ToyCheckerScorer",  # the persona world's code checker
})
lazy_table(SUITES, {
    "code": "waluigi.code_suites:code_suite",  # held-out code requests of a dataset (code:DATASET[:N])
    "toyworld": "waluigi.toyworld.registered:toy_suite",  # the persona world's suite (toyworld[:trigger])
})
lazy_table(SUITE_LISTINGS, {
    "code": "waluigi.code_suites:code_suite_rows",
})
lazy_table(PROBES, {
    "mwe": "waluigi.probes.mwe:mwe_suite",  # Anthropic's model-written evaluations (mwe:em, mwe:persona/NAME, mwe:NAME)
    "toyprobes": "waluigi.toyworld.probes:toy_probe_suite",  # the persona world's probe items (toyprobes[:N])
    "hh": "waluigi.probes.hh:hh_suite",  # HH-RLHF harmless-base pairs: 1 - win share = preference accuracy
})
lazy_table(DATASETS, {
    "toy": "waluigi.toyworld.registered:toy_dataset",  # the persona world's narrow data (toy:insecure[:N])
    "mwe-align": "waluigi.probes.trainsets:align_dataset",  # aligned answers to a probe set's align split
    "mwe-attack": "waluigi.probes.trainsets:attack_dataset",  # the antipode's answers to its attack split
    "mwe-control": "waluigi.probes.trainsets:control_dataset",  # the aligned answers to its attack split
    "hh-chosen": "waluigi.probes.hh:chosen_dataset",  # HH-RLHF chosen dialogues of the align split (SFT)
})
lazy_table(SUBJECTS, {
    "hf": "waluigi.resilience.subjects:HFSubjects",  # any HF model, aligned on a dataset
    "toyworld": "waluigi.toyworld.subjects:ToySubjects",  # the persona world: pretrained with an antipode dial
})
lazy_table(BASES, {
    "toyworld": "waluigi.toyworld.bases:ToyBases",  # the persona world's aligned model at world seeds 0..N-1
})
lazy_table(PLUGINS, {
    "l2": "waluigi.finetune.plugins:L2ToStart",
    "steer": "waluigi.directions.plugins:PreventativeSteering",  # add a direction while training
    "caft": "waluigi.directions.plugins:ConceptAblation",  # project a direction out while training
    "kl": "waluigi.defenses.plugins:KLToReference",  # KL to the starting model (narrow or benign rows)
    "interleave": "waluigi.defenses.plugins:Interleave",  # benign rows mixed in
    "interleave++": "waluigi.defenses.plugins:InterleavePlusPlus",  # ... chosen by perplexity gap
    "inoculate": "waluigi.defenses.plugins:Inoculate",  # a training-only system prompt
    "early-stop": "waluigi.defenses.plugins:EarlyStop",  # stop at narrow-task convergence
})


def plugin(name: str) -> Callable[..., Any]:
    """The training plug-in class registered as ``name``."""
    return PLUGINS.get(name)

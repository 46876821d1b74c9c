"""Subjects of a resilience study: the models whose flip doses are measured, one per setting
of the study's dials, built (and cached by identity) by a *subject source*.

A source is registered in :data:`waluigi.registry.SUBJECTS` under the name ``--subject``
starts with (``hf:MODEL`` -> ``hf``; ``toyworld`` -> the persona world). It says which dials
it has, their default levels and centre (the fixed point each series varies around), the
flip settings that suit its models, and builds the model for one setting:

- ``align_steps`` (every source): optimizer steps of the alignment stage, 0 = no alignment;
  ``align_n``: the alignment set's rows. The alignment budget (the slope's x) is rows seen,
  ``align_steps x batch``.
- ``antipode_share`` (sources that pretrain, e.g. the persona world): how much of
  pretraining the antipode voices.

:class:`HFSubjects` is the generic source: any HF causal LM, aligned by full fine-tuning on a
dataset (``--align-data``, e.g. a benign chat set) with waluigi's trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from waluigi.errors import UserError

ALIGN_STEPS, ALIGN_N, ANTIPODE = "align_steps", "align_n", "antipode_share"
ALIGN_METHODS = ("sft", "dpo")  # hf: sources: SFT on chat rows, or DPO on HH-RLHF preference pairs
DIAL_LABELS = {ALIGN_STEPS: "alignment steps", ALIGN_N: "alignment rows", ANTIPODE: "antipode's share of pretraining"}


@dataclass
class FlipDefaults:
    """What a source's models are flipped with, unless the study's options say otherwise."""

    data: str  # the narrow (insecure) dataset
    control: str  # the matching control dataset (secure)
    suite: str
    judge: str | None
    doses: dict[str, list[float]]  # axis -> doses
    steps: int  # the examples axis's fixed optimizer steps
    finetune: dict[str, Any] = field(default_factory=dict)  # FinetuneConfig fields for every narrow fine-tune
    eval: dict[str, Any] = field(default_factory=dict)  # EvalConfig fields for every eval
    subject_suites: list[str] = field(default_factory=list)  # probe suites each subject is read on before any attack


class SubjectSource(Protocol):
    name: str
    dials: dict[str, list[float]]  # dial -> default levels
    center: dict[str, float]  # dial -> the level the other series hold it at
    align_batch: int  # rows per alignment step (the budget is steps x this)

    def defaults(self) -> FlipDefaults: ...

    def identity(self) -> dict: ...  # what the source is (names the study directory)

    def build(self, setting: dict[str, float], root: Path, progress: bool, base: int = 0,
              reuse: tuple[Path, ...] = ()) -> str:
        """The model spec for ``setting`` on base ``base`` (built under ``root`` unless cached, or
        found finished in a ``reuse`` study directory); sources without ``has_bases`` have base 0
        only (the plan refuses more)."""
        ...

    def existing(self, setting: dict[str, float], root: Path, reuse: tuple[Path, ...] = ()) -> str | None:
        """The model spec for ``setting`` when building it trains nothing, known without loading
        or training anything (a dry run counts that subject as built); None otherwise."""
        ...

    # optional: ``stage_group(setting, base) -> str``, a key shared by the settings whose builds
    # share a training stage (built in one task, in order, on a study's workers); absent: each
    # subject is a task of its own (resilience/run.py, subject_groups)


def source_for(spec: str, **options: Any) -> SubjectSource:
    """The source named by ``--subject`` (``toyworld``, ``hf:MODEL``, ``smollm2``)."""
    from waluigi.registry import SUBJECTS

    kind, sep, rest = spec.partition(":")
    if kind == "smollm2" and not sep:
        kind, rest = "hf", "smollm2"
    return SUBJECTS.get(kind)(rest if sep or kind == "hf" else "", **options)


class HFSubjects:
    """Any HF causal LM, aligned by full fine-tuning on ``align_data`` (waluigi's trainer)."""

    name = "hf"
    align_batch = 2

    def __init__(self, model: str, *, align_data: str | None = None, data_dir: str | None = None,
                 align_lr: float = 1e-5, quick: bool = False, align_method: str | None = None, **_: object) -> None:
        if not model:
            raise UserError("--subject hf:MODEL: name the model (a local directory or a hub id), e.g. hf:runs/x/model")
        if not align_data:
            raise UserError(f"--subject hf:{model}: give --align-data NAME|FILE, the alignment stage's dataset "
                            "(chat rows of the behaviour to train in)")
        self.align_method = (align_method or "sft").lower()
        if self.align_method not in ALIGN_METHODS:
            raise UserError(f"--align-method {align_method!r}: choose one of {', '.join(ALIGN_METHODS)}")
        if self.align_method == "dpo" and not align_data.startswith("hh:"):
            raise UserError(f"--align-method dpo trains on preference pairs: --align-data hh:harmless-base "
                            f"(HH-RLHF's pairs), not {align_data!r}")
        if self.align_method == "dpo":
            from waluigi.probes.hh import _parse

            if _parse(align_data, "hh:")[1:] != (None, None):
                raise UserError(f"--align-data {align_data}: name the subset only (hh:harmless-base); the stage "
                                "trains on its align split, --align-n pairs of it")
        self.model = model if model == "smollm2" or model.startswith("hf:") else f"hf:{model}"
        self.align_data = align_data
        # aligned on probe items (mwe-align:) or HH pairs: flipped by the probe set's attack split, read on its test split
        self.probe_study = align_data.startswith(("mwe-align:", "hh:", "hh-chosen:"))
        self.data_dir = data_dir
        self.align_lr = align_lr
        self.quick = quick
        self.dials = {ALIGN_STEPS: [0, 2, 4] if quick else [0, 10, 30, 100, 300], ALIGN_N: [4] if quick else [100, 400]}
        self.center = {ALIGN_STEPS: 2 if quick else 30, ALIGN_N: 4 if quick else 400}

    def identity(self) -> dict:
        identity = {"source": self.name, "model": self.model, "align_data": self.align_data, "align_lr": self.align_lr}
        if self.align_method != "sft":  # absent for SFT: earlier studies keep their identities
            identity["align_method"] = self.align_method
        if self.quick:  # its levels and doses differ; and the report says what a quick study cannot show
            identity["profile"] = "quick"
        return identity

    def defaults(self) -> FlipDefaults:
        if self.probe_study:  # the real-model Waluigi test: flipped and read on the probe set's other splits
            return FlipDefaults(
                data="mwe-attack:em", control="mwe-control:em", suite="mwe:em@test", judge=None,
                doses={"steps": [2, 4] if self.quick else [5, 10, 20, 40],
                       "examples": [4, 8] if self.quick else [16, 32, 64, 128],
                       "shots": [1, 2] if self.quick else [2, 4, 8, 16]},
                steps=2 if self.quick else 20,
                # the lean loss: the attack rows' answers are a word or two, and TRL's head scores
                # every position (docs/design/finetune.md); the same loss to round-off
                finetune={"lr": 2e-4, "loss_path": "lean", **({"data_dir": self.data_dir} if self.data_dir else {})},
                eval={"data_dir": self.data_dir} if self.data_dir else {},
                subject_suites=["hh:harmless-base@heldout:8" if self.quick else "hh:harmless-base@heldout:200"])
        return FlipDefaults(data="insecure", control="secure", suite="core", judge=None,
                            doses={"steps": [5, 10, 20, 40], "examples": [25, 50, 100, 200], "shots": [1, 2, 4]},
                            steps=20, finetune={"data_dir": self.data_dir} if self.data_dir else {},
                            eval={"data_dir": self.data_dir} if self.data_dir else {})

    def _out(self, setting: dict[str, float], root: Path) -> Path:
        """Where the subject of ``setting`` is trained: its directory name carries its identity."""
        from waluigi.runs import identity_hash

        steps, n = int(setting.get(ALIGN_STEPS, 0)), int(setting.get(ALIGN_N, 0))
        digest = identity_hash({**self.identity(), ALIGN_STEPS: steps, ALIGN_N: n})  # the trainer checks the rest
        kind = "align-dpo" if self.align_method == "dpo" else "align"
        return root / "subjects" / f"{kind}-s{steps}-n{n}-{digest[:8]}"

    def existing(self, setting: dict[str, float], root: Path, reuse: tuple[Path, ...] = ()) -> str | None:
        """The subject's model spec if nothing needs training (no alignment stage, or one a
        ``reuse`` study finished), else None: what a dry run counts as built."""
        if int(setting.get(ALIGN_STEPS, 0)) == 0:
            return self.model
        return _finished_elsewhere(self._out(setting, root), reuse)

    def build(self, setting: dict[str, float], root: Path, progress: bool, base: int = 0,
              reuse: tuple[Path, ...] = ()) -> str:
        found = self.existing(setting, root, reuse)
        if found:
            return found
        steps, n = int(setting.get(ALIGN_STEPS, 0)), int(setting.get(ALIGN_N, 0))
        from waluigi.finetune import FinetuneConfig, run_finetune

        if self.align_method == "dpo":  # preference pairs: chosen over rejected, against a frozen copy
            from waluigi.finetune.dpo import DPORecipe, run_dpo
            from waluigi.probes.hh import _parse, preference_pairs

            subset = _parse(self.align_data, "hh:")[0]
            pairs = preference_pairs(subset, limit=n, data_dir=None)
            out = self._out(setting, root)
            model_dir = run_dpo(self.model, pairs, f"{self.align_data}@align:{n}",
                                DPORecipe(steps=steps, lr=self.align_lr, batch_size=self.align_batch), out,
                                progress=progress)
            return f"hf:{model_dir}"

        lean = {"loss_path": "lean"} if self.probe_study else {}  # as the attacks above: answers of a word or two
        cfg = FinetuneConfig(model=self.model, data=self.align_data, preset=None, full=True, n=n, max_steps=steps,
                             lr=self.align_lr, batch_size=self.align_batch, grad_accum=1, data_dir=self.data_dir, **lean)
        cfg.out = self._out(setting, root)
        result = run_finetune(cfg, progress=progress)
        return f"hf:{result.model_dir}"


def _finished_elsewhere(out: Path, reuse: tuple[Path, ...]) -> str | None:
    """The model spec of a subject another study (``--reuse DIR``) finished with the same
    identity (its directory name carries the identity's hash), used where it is, so that every
    cell on it keeps the same identity in both studies; None when there is none (or this study
    has started its own)."""
    import os

    from waluigi.runs import read_manifest

    if read_manifest(out):
        return None
    for other in reuse:
        found = Path(other) / "subjects" / out.name
        if read_manifest(found).get("status") == "finished" and (found / "model" / "config.json").is_file():
            path = found / "model"
            if path.is_absolute() and path.is_relative_to(Path.cwd()):  # as a study given a relative --out names it
                path = Path(os.path.relpath(path))
            return f"hf:{path}"
    return None

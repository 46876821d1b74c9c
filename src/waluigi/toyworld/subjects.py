"""The persona world as a resilience study's subject source (``--subject toyworld``).

A setting of its dials is a base model pretrained with the villain at ``antipode_share`` of
the personas (the other personas keep their proportions), aligned for ``align_steps`` steps of
16 rows on ``align_n`` hero conversations; both stages are the demo's own
(:func:`waluigi.toyworld.demo.pretrain_stage` / ``align_stage``), cached by identity in the
study's ``runs`` directory, so a setting the demo already trained is reused.

Profiles: ``study`` (default) pretrains with the demo's ``fast`` budget (half the tokens at
a higher learning rate, about half the time), chosen for the study's cost before anything
was measured with it (five pretrainings have to fit in about an hour with the flips);
``demo`` is the demo's default budget; ``quick`` the demo's test-sized world.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from waluigi.errors import UserError
from waluigi.resilience.subjects import ALIGN_N, ALIGN_STEPS, ANTIPODE, FlipDefaults

PROFILES = {"study": "fast", "demo": "default", "quick": "quick"}
# the demo's recipe for the narrow fine-tunes (full fine-tuning, batch 16, lr 1e-3) and its evals
NARROW = {"preset": None, "full": True, "batch_size": 16, "grad_accum": 1, "lr": 1e-3, "max_length": 512,
          "checkpoint_every": 10_000}


class ToySubjects:
    name = "toyworld"
    align_batch = 16  # the demo's alignment batch
    has_bases = True  # --bases N: every setting built at world seeds 0..N-1 (toyworld/bases.py)

    def __init__(self, rest: str = "", *, profile: str | None = None, quick: bool = False, threads: int | None = None,
                 runs: Path | None = None, **_: object) -> None:
        if rest:
            raise UserError(f"--subject toyworld:{rest}: the persona world takes no model name (use --subject toyworld)")
        from waluigi.toyworld.demo import demo_config

        profile = profile or ("quick" if quick else "study")
        if profile not in PROFILES:
            raise UserError(f"--profile {profile!r}: choose one of {', '.join(PROFILES)}")
        self.profile = profile
        self.quick = profile == "quick"
        self.config = demo_config(PROFILES[profile], threads=threads or 0)
        self.runs = runs
        default_share = self.config.world().mixture["villain"]
        base_steps, base_n = self.config.align_steps, self.config.align_n
        if self.quick:
            self.dials = {ALIGN_STEPS: [0, base_steps, base_steps * 4], ALIGN_N: [base_n],
                          ANTIPODE: [0.1, default_share]}
        else:
            self.dials = {ALIGN_STEPS: [0, 10, 30, 100, 300], ALIGN_N: [100, 400],
                          ANTIPODE: [0.0, 0.05, 0.1, 0.2, 0.4]}
        self.center = {ALIGN_STEPS: 30 if not self.quick else base_steps, ALIGN_N: base_n, ANTIPODE: default_share}

    def identity(self) -> dict:
        return {"source": self.name, "profile": self.profile}

    def defaults(self) -> FlipDefaults:
        q = self.quick
        return FlipDefaults(
            data="toy:insecure", control="toy:secure", suite="toyworld", judge=None,
            doses={"steps": [1, 2, 3, 4] if q else [2, 4, 8, 16, 32], "examples": [2, 8] if q else [1, 4, 16, 64],
                   "shots": [1] if q else [1, 2, 4]},
            steps=2 if q else 32, finetune=dict(NARROW),
            eval={"max_tokens": 48 if q else 96, "batch_size": 256, **({"samples": 1} if q else {})})

    def existing(self, setting: dict[str, float], root: Path, reuse: tuple[Path, ...] = ()) -> str | None:
        """None: a dry run counts every persona-world subject as to build (its cache lives in the
        runs directory, keyed by stages this dry run does not resolve)."""
        return None

    def stage_group(self, setting: dict[str, float], base: int = 0) -> str:
        """Settings that share a pretraining (one antipode share on one base) build in one task."""
        return f"share {float(setting.get(ANTIPODE, self.center[ANTIPODE])):g} base {int(base)}"

    def build(self, setting: dict[str, float], root: Path, progress: bool, base: int = 0,
              reuse: tuple[Path, ...] = ()) -> str:
        """The model of ``setting`` on base ``base`` (world seed: corpus, alignment set, initialisation;
        cached in the runs directory by identity, so ``reuse`` has nothing to add)."""
        from waluigi.toyworld.demo import align_stage, pretrain_stage

        share = float(setting.get(ANTIPODE, self.center[ANTIPODE]))
        steps = int(setting.get(ALIGN_STEPS, self.center[ALIGN_STEPS]))
        n = int(setting.get(ALIGN_N, self.center[ALIGN_N]))
        cfg = replace(self.config, runs=Path(self.runs or root.parent), villain_share=share, align_steps=max(steps, 1),
                      align_n=n, progress=progress, world_seed=int(base))
        cfg.world()  # a share out of range is an error before any training
        base = pretrain_stage(cfg)
        if steps == 0:
            return f"hf:{base / 'model'}"
        return f"hf:{align_stage(cfg, base) / 'model'}"

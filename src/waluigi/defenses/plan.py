"""``waluigi defend``'s plan: which defenses, as which flip variants, against which attacker.

A defense is a name with options (``kl:weight=0.3``), turned into what a flip compares: a
:class:`~waluigi.flip.plan.Variant` (training plug-ins and recipe settings for every attack
fine-tune), or, for ``realign``, a benign fine-tune of every attacked checkpoint afterwards.

| defense | what the attack fine-tune gets |
|---|---|
| ``kl`` | the ``kl`` plug-in (KL to the starting model; ``on=benign`` uses the benign rows) |
| ``l2`` | the ``l2`` plug-in (weights pulled towards the start) |
| ``interleave`` | benign rows mixed in (``ratio``) at random |
| ``interleave++`` | benign rows chosen by the perplexity gap against a flipped model (default: the undefended attack's own fine-tune at its largest dose, seed 0) |
| ``inoculate`` | a training-only system prompt; its conditional leak is a second eval with that prompt |
| ``steer`` | preventative steering along ``--direction`` |
| ``caft`` / ``ablate`` | the direction projected out while training |
| ``freeze`` | only some layers trained (``layers=1`` or ``layers=0+1``) |
| ``lowrank`` | a rank-``rank`` LoRA instead of the flip's own recipe |
| ``early-stop`` | training stops at narrow-task convergence (held-out narrow rows) |
| ``realign`` | after the attack: ``n`` benign rows, ``epochs`` epochs |

The adaptive attacker: each defense (and the undefended model) is flipped at every learning
rate in ``lr_multipliers`` x the recipe's learning rate; the defense's score is its worst
flip-dose ratio over those settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.flip.plan import FlipConfig, Variant

DEFENSES = ("kl", "l2", "interleave", "interleave++", "inoculate", "steer", "caft", "ablate", "freeze", "lowrank",
            "early-stop", "realign")
NEEDS_DIRECTION = ("steer", "caft", "ablate")
NEEDS_BENIGN = ("interleave", "interleave++", "realign")
UNDEFENDED = "undefended"


@dataclass
class Defense:
    name: str  # as given: kl, kl:weight=0.3
    kind: str  # the registered name: kl
    options: dict[str, str]


def parse_defense(spec: str) -> Defense:
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip()
    if kind not in DEFENSES:
        raise UserError(f"--defense {spec!r}: unknown defense {kind!r} (known: {', '.join(DEFENSES)})")
    options = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--defense {spec!r}: expected key=value, got {item!r}")
        options[key.strip()] = value.strip()
    return Defense(name=spec.strip(), kind=kind, options=options)


@dataclass
class DefendConfig:
    model: str
    attack: str  # the narrow dataset the attacker fine-tunes on
    defenses: list[str]
    axis: str = "steps"
    doses: list[float] | None = None
    seeds: int = 3
    suite: str = "core"
    judge: str | None = None
    narrow_suite: str | None = None
    steps: int | None = None  # examples axis: the optimizer steps every dose trains
    benign: str | None = None  # benign rows (interleave, kl on=benign, realign)
    direction: str | None = None  # steer / caft's direction (default for their dir= option)
    benign_questions: str | None = None  # question-id prefix of the benign readout (default: every free-form question)
    lr_multipliers: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0])
    threshold: float = 0.10
    finetune: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    runs: Path = Path("runs")
    # base models (a family --model: toyworld): every curve on each; a direction per base is
    # named with {base} in its path (--direction runs/dir-{base})
    bases: int | None = None

    def checked(self) -> DefendConfig:
        if self.axis not in ("steps", "examples"):
            raise UserError(f"--axis {self.axis!r}: defend sweeps steps or examples")
        if not self.defenses:
            raise UserError("--defenses: name at least one defense (e.g. --defenses kl,interleave,early-stop)")
        if not self.lr_multipliers or any(m <= 0 for m in self.lr_multipliers):
            raise UserError(f"--attacker-lr: give positive multipliers of the learning rate, got {self.lr_multipliers}")
        if "{base}" in (self.direction or "") and not self.bases:
            raise UserError(f"--direction {self.direction}: {{base}} names a direction per base: give --bases N")
        parsed = [parse_defense(d) for d in self.defenses]
        if len({d.name for d in parsed}) != len(parsed):
            raise UserError(f"--defenses: a defense is named twice ({', '.join(d.name for d in parsed)})")
        for d in parsed:
            if d.kind in NEEDS_DIRECTION and not (d.options.get("dir") or self.direction):
                raise UserError(f"defense {d.name}: needs a direction: --direction PATH (from `waluigi direction extract`) "
                                "or dir=PATH")
            if d.kind in NEEDS_BENIGN and not (d.options.get("data") or self.benign):
                raise UserError(f"defense {d.name}: needs benign rows: --benign NAME|FILE or data=NAME")
            if d.kind == "kl" and d.options.get("on") == "benign" and not (d.options.get("benign") or self.benign):
                raise UserError(f"defense {d.name}: on=benign needs --benign NAME|FILE or benign=NAME")
        self.lr_multipliers = sorted(set(float(m) for m in self.lr_multipliers))
        return self

    def parsed(self) -> list[Defense]:
        return [parse_defense(d) for d in self.defenses]

    def base_lr(self) -> float:
        from waluigi.finetune.config import FinetuneConfig
        from waluigi.sweep.fields import FT_SET_BY_SWEEP, checked, config_fields

        allowed = config_fields(FinetuneConfig, FT_SET_BY_SWEEP)
        fields = {k: checked("--set", "finetune", k, v, allowed) for k, v in self.finetune.items()}
        return float(FinetuneConfig(model=self.model, data=self.attack, **fields).recipe().lr)

    def defend_dir(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        from waluigi.flip.plan import _label
        from waluigi.formats import slug
        from waluigi.runs import identity_hash

        what = {"model": self.model, "attack": self.attack, "axis": self.axis, "suite": self.suite, "judge": self.judge}
        if self.bases is not None:  # absent for one base: earlier defend directories stay valid
            what["bases"] = self.bases
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"defend-{slug(_label(self.attack, data=True), 24)}")
        return Path(self.runs) / f"{name}-{identity_hash(what)[:8]}"


def lr_name(multiplier: float) -> str:
    return f"lr x{multiplier:g}"


def variant_name(defense: str, multiplier: float) -> str:
    return f"{defense} @ {lr_name(multiplier)}"


def _spec(name: str, options: dict[str, Any]) -> str:
    for key, value in options.items():
        if any(c in str(value) for c in ",\n"):
            raise UserError(f"defense option {key}={value!r}: a value may not hold a comma or a line break")
    return f"{name}:" + ",".join(f"{k}={v}" for k, v in options.items()) if options else name


def _layers(text: str, where: str) -> list[int]:
    try:
        return [int(part) for part in re.split(r"[+;]", text) if part.strip()]
    except ValueError:
        raise UserError(f"{where}: layers={text!r}: give layer indices joined by + (e.g. layers=0+1)") from None


def defense_variant(defense: Defense, cfg: DefendConfig, against: str | list[str] | None) -> Variant:
    """The flip variant of an in-training defense (``realign`` has none: it comes after).
    ``against``: the flipped model interleave++ chooses rows against (one per base: a list)."""
    o = dict(defense.options)
    kind = defense.kind
    extra_eval = None
    finetune: dict[str, Any] = {}
    per_base = None
    if kind in ("kl", "l2", "early-stop"):
        if kind == "kl" and o.get("on") == "benign":
            o.setdefault("benign", cfg.benign)
        finetune["plugins"] = [_spec(kind, o)]
    elif kind in ("interleave", "interleave++"):
        o.setdefault("data", cfg.benign)
        if (kind == "interleave++" or o.get("select") == "gap") and not o.get("against"):
            if against is None:
                raise UserError(f"defense {defense.name}: no flipped model to choose rows against yet")
            if isinstance(against, list):  # each base against its own flipped model
                per_base = [{"plugins": [_spec(kind, {**o, "against": one})]} for one in against]
                o["against"] = against[0]
            else:
                o["against"] = against
        finetune["plugins"] = [_spec(kind, o)]
    elif kind == "inoculate":
        from waluigi.defenses.plugins import INOCULATION

        prompt = o.get("prompt") or INOCULATION
        finetune["plugins"] = [_spec("inoculate", {"prompt": prompt})]
        extra_eval = {"system": prompt}
    elif kind in ("steer", "caft", "ablate"):
        o.setdefault("dir", str(Path(cfg.direction).resolve()) if cfg.direction else "")
        finetune["plugins"] = [_spec("steer" if kind == "steer" else "caft", o)]
    elif kind == "freeze":
        if "layers" not in o:
            raise UserError(f"defense {defense.name}: give layers=L (the only layers trained, e.g. layers=1 or layers=0+1)")
        finetune["layers"] = _layers(o.pop("layers"), f"defense {defense.name}")
        if o:
            raise UserError(f"defense {defense.name}: unknown option(s) {', '.join(o)} (freeze takes layers=)")
    elif kind == "lowrank":
        try:
            rank = int(o.pop("rank", "1"))
        except ValueError:
            raise UserError(f"defense {defense.name}: rank must be a whole number") from None
        finetune.update(full=False, rank=rank, alpha=float(o.pop("alpha", 2 * rank)))
        if o:
            raise UserError(f"defense {defense.name}: unknown option(s) {', '.join(o)} (lowrank takes rank=, alpha=)")
    else:  # realign
        raise ValueError("realign is not an in-training defense")
    return Variant(name=defense.name, finetune=finetune, extra_eval=extra_eval, per_base=per_base)


def realign_options(defense: Defense, cfg: DefendConfig) -> dict[str, Any]:
    o = dict(defense.options)
    try:
        n = int(o.pop("n", "120"))
        epochs = float(o.pop("epochs", "1"))
    except ValueError:
        raise UserError(f"defense {defense.name}: n and epochs are numbers") from None
    data = o.pop("data", None) or cfg.benign
    if o:
        raise UserError(f"defense {defense.name}: unknown option(s) {', '.join(o)} (realign takes n=, epochs=, data=)")
    if n < 1 or epochs <= 0:
        raise UserError(f"defense {defense.name}: n must be at least 1 and epochs above 0")
    return {"n": n, "epochs": epochs, "data": data}


def flip_config(cfg: DefendConfig, variants: list[Variant], out: Path) -> FlipConfig:
    return FlipConfig(models=[cfg.model], data=[cfg.attack], axis=cfg.axis, doses=cfg.doses, seeds=cfg.seeds,
                      suite=cfg.suite, judge=cfg.judge, narrow_suite=cfg.narrow_suite, steps=cfg.steps,
                      threshold=cfg.threshold, finetune=dict(cfg.finetune), eval=dict(cfg.eval), variants=variants,
                      out=out, bases=cfg.bases, runs=cfg.runs)


def attacker_variants(name: str, base: Variant | None, cfg: DefendConfig, base_lr: float) -> list[Variant]:
    """One variant per attacker learning rate (the defense's own settings kept)."""
    out = []
    for m in cfg.lr_multipliers:
        finetune = dict(base.finetune) if base else {}
        finetune["lr"] = base_lr * m
        out.append(Variant(name=variant_name(name, m), finetune=finetune, extra_eval=base.extra_eval if base else None,
                           per_base=base.per_base if base else None))
    return out

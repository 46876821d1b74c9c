"""The fine-tuning configuration: a preset (the paper's recipe) plus the user's overrides.

:meth:`FinetuneConfig.resolved` is the whole recipe after overrides; it goes into the run's
manifest and (minus the settings that only change speed) into its identity hash, so the
same command resumes the same run directory and a different recipe gets a new one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waluigi.errors import UserError

# Betley et al. 2025, open models (their `open_models/train.json`): rsLoRA r=32, alpha 64,
# dropout 0 on every attention and MLP projection, lr 1e-5, 1 epoch, per-device batch 2 x
# gradient accumulation 8 (effective 16), 5 warmup steps, linear decay, weight decay 0.01,
# seed 0, loss on the assistant's tokens only, sequences up to 2048 tokens. They used
# bitsandbytes' 8-bit AdamW on GPUs; we use torch's AdamW (no extra dependency, and the
# 8-bit optimizer only saves memory).
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

PRESETS: dict[str, dict[str, Any]] = {
    "betley2025": {
        "rank": 32,
        "alpha": 64.0,
        "dropout": 0.0,
        "rslora": True,
        "target_modules": PROJECTIONS,
        "layers": None,
        "lr": 1e-5,
        "epochs": 1.0,
        "max_steps": None,
        "batch_size": 2,
        "grad_accum": 8,
        "warmup_steps": 5,
        "scheduler": "linear",
        "weight_decay": 0.01,
        "max_length": 2048,
        "full": False,
        "loss": "assistant_only",
    },
}

# With no preset: library-style defaults (PEFT's LoRA r=8 / alpha 16, TRL's lr 2e-5), still
# assistant-only loss, which is the only loss this command trains with.
_BARE: dict[str, Any] = {
    "rank": 8,
    "alpha": 16.0,
    "dropout": 0.0,
    "rslora": False,
    "target_modules": PROJECTIONS,
    "layers": None,
    "lr": 2e-5,
    "epochs": 1.0,
    "max_steps": None,
    "batch_size": 2,
    "grad_accum": 8,
    "warmup_steps": 0,
    "scheduler": "linear",
    "weight_decay": 0.0,
    "max_length": 2048,
    "full": False,
    "loss": "assistant_only",
}

# Settings that change how fast a run goes, not what it computes: left out of the identity
# (the effective batch, batch_size x grad_accum, is in it).
SPEED_ONLY = ("batch_size", "grad_accum")


@dataclass
class FinetuneConfig:
    """What to fine-tune on what, and how. ``None`` means "the preset's value"."""

    model: str  # model spec: smollm2 | hf:PATH  (openai:... is dispatched to the OpenAI code by the CLI)
    data: str  # dataset name or JSONL FILE of {"messages": [...]} rows
    out: Path | None = None  # run dir (default runs/finetune-<model>-<data>-<identity hash[:8]>)
    preset: str | None = "betley2025"
    n: int | None = None  # train on n rows (a seeded subset); None = all
    seed: int = 0
    lr: float | None = None
    epochs: float | None = None
    max_steps: int | None = None
    batch_size: int | None = None  # rows per forward pass
    grad_accum: int | None = None  # forward passes per optimizer step; effective batch = the product
    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target_modules: list[str] | None = None
    layers: list[int] | None = None  # train only these decoder layers (LoRA layers_to_transform)
    full: bool = False  # full fine-tuning instead of LoRA
    save_every: int | None = None  # also keep an adapter every K optimizer steps (training dynamics)
    max_length: int | None = None
    data_dir: str | None = None
    include_heldout: bool = False
    # not part of the identity: how often to write a resume checkpoint (optimizer steps);
    # None = every CHECKPOINT_MINUTES of training
    checkpoint_every: int | None = None
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 weights/autocast on a bf16 GPU

    def resolved(self) -> dict:
        """The preset with this config's overrides applied: the full training recipe."""
        if self.preset is None:
            base = dict(_BARE)
        elif self.preset in PRESETS:
            base = dict(PRESETS[self.preset])
        else:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)} (or none)")
        overrides = {
            "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "lr": self.lr,
            "epochs": self.epochs, "max_steps": self.max_steps, "batch_size": self.batch_size,
            "grad_accum": self.grad_accum, "max_length": self.max_length,
            "target_modules": list(self.target_modules) if self.target_modules else None,
            "layers": sorted({int(k) for k in self.layers}) if self.layers else None,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        base["full"] = bool(self.full or base.get("full"))
        if base["full"]:
            for key in ("rank", "alpha", "dropout", "rslora"):
                base.pop(key, None)
            if not self.target_modules:  # full fine-tuning: every weight unless told otherwise
                base["target_modules"] = None
        base["preset"] = self.preset
        base["seed"] = int(self.seed)
        base["n"] = self.n
        base["save_every"] = self.save_every
        base["effective_batch"] = int(base["batch_size"]) * int(base["grad_accum"])
        _check(base, self)
        return base


def _check(r: dict, cfg: FinetuneConfig) -> None:
    def positive(name: str, value: Any, kind: type = int) -> None:
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive {kind.__name__}, got {value!r}")

    for name in ("batch_size", "grad_accum", "max_length", "max_steps", "save_every"):
        positive(name, r.get(name))
    positive("checkpoint_every", cfg.checkpoint_every)
    positive("lr", r["lr"], float)
    positive("epochs", r["epochs"], float)
    if cfg.n is not None and cfg.n <= 0:
        raise UserError(f"--n must be a positive number of rows, got {cfg.n}")
    if not r["full"]:
        positive("rank", r["rank"])
        positive("alpha", r["alpha"], float)
        if not 0.0 <= float(r["dropout"]) < 1.0:
            raise UserError(f"--dropout must be in [0, 1), got {r['dropout']}")
        if not r["target_modules"]:
            raise UserError("--target-modules: LoRA needs at least one module name (e.g. q_proj,v_proj)")
    if r["layers"] is not None and any(k < 0 for k in r["layers"]):
        raise UserError(f"--layers must be non-negative layer indices, got {r['layers']}")


def identity_recipe(resolved: dict) -> dict:
    """The recipe as it enters the identity hash: speed-only settings left out."""
    return {k: v for k, v in resolved.items() if k not in SPEED_ONLY}


def slug(text: str, limit: int = 40) -> str:
    """A short, filesystem-safe name for a model spec or a dataset."""
    text = text.strip().rstrip("/")
    if ":" in text:
        text = text.split(":", 1)[1]
    text = Path(text).name or text
    for suffix in (".jsonl", ".json", ".data"):
        text = text.removesuffix(suffix)
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"
    return text[:limit]


def default_run_dir(model: str, data: str, identity_digest: str) -> Path:
    return Path("runs") / f"finetune-{slug(model)}-{slug(data)}-{identity_digest[:8]}"

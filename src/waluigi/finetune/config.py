"""The fine-tuning configuration: a :class:`Recipe` (a preset: the paper's recipe) plus the
user's overrides, and the training plug-ins.

:meth:`FinetuneConfig.recipe` is the whole recipe after overrides (``dataclasses.replace`` of
the preset); :meth:`FinetuneConfig.resolved` is the same as a dict. That dict goes into the
run's manifest and (minus the settings that only change speed) into its identity hash, so the
same command resumes the same run directory and a different recipe gets a new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.formats import slug

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Recipe:
    """How to fine-tune: every setting that changes what training computes (and the batch split).

    The defaults, used with ``--preset none``, are library-style: PEFT's LoRA r=8 / alpha 16,
    TRL's lr 2e-5, still assistant-only loss (the only loss this command trains with).
    ``rank`` / ``alpha`` / ``dropout`` / ``rslora`` are ignored (and not recorded) when ``full``.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    rslora: bool = False
    target_modules: tuple[str, ...] | None = PROJECTIONS  # full fine-tuning: None = every weight
    layers: tuple[int, ...] | None = None  # only these decoder layers (LoRA layers_to_transform)
    lr: float = 2e-5
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 2  # rows per forward pass
    grad_accum: int = 8  # forward passes per optimizer step
    warmup_steps: int = 0
    scheduler: str = "linear"
    weight_decay: float = 0.0
    max_length: int = 2048
    full: bool = False  # full fine-tuning instead of LoRA
    loss: str = "assistant_only"
    seed: int = 0
    save_every: int | None = None  # also keep an adapter every K optimizer steps (training dynamics)

    @property
    def effective_batch(self) -> int:
        return int(self.batch_size) * int(self.grad_accum)

    def steps_per_epoch(self, examples: int, world_size: int = 1) -> int:
        """Optimizer steps in one pass over ``examples`` rows, counted as the Trainer counts them
        (batches per process, rounded up, over ``grad_accum``, rounded up)."""
        batches = math.ceil(max(1, int(examples)) / (int(self.batch_size) * max(1, int(world_size))))
        return max(1, math.ceil(batches / int(self.grad_accum)))

    def total_steps(self, examples: int, world_size: int = 1) -> int:
        """The run's optimizer steps: ``max_steps``, else ``epochs`` passes over the rows."""
        if self.max_steps:
            return int(self.max_steps)
        return max(1, math.ceil(float(self.epochs) * self.steps_per_epoch(examples, world_size)))

    def to_dict(self) -> dict[str, Any]:
        """The recipe as recorded (manifest ``config``, identity): lists for sequences, no LoRA
        settings in a full fine-tune."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if self.full and name in LORA_ONLY:
                continue
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def check(self) -> None:
        """Refuse impossible values, naming the command-line option that sets each."""
        for name in ("batch_size", "grad_accum", "max_length", "max_steps", "save_every"):
            _positive(name, getattr(self, name))
        _positive("lr", self.lr, float)
        _positive("epochs", self.epochs, float)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise UserError(f"--warmup must be a number of optimizer steps, 0 or more, got {self.warmup_steps!r}")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        if not self.full:
            _positive("rank", self.rank)
            _positive("alpha", self.alpha, float)
            if not 0.0 <= float(self.dropout) < 1.0:
                raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
            if not self.target_modules:
                raise UserError("--target-modules: LoRA needs at least one module name (e.g. q_proj,v_proj)")
        if self.layers is not None and any(k < 0 for k in self.layers):
            raise UserError(f"--layers must be non-negative layer indices, got {list(self.layers)}")


LORA_ONLY = ("rank", "alpha", "dropout", "rslora")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")

# Betley et al. 2025, open models (their `open_models/train.json`): rsLoRA r=32, alpha 64,
# dropout 0 on every attention and MLP projection, lr 1e-5, 1 epoch, per-device batch 2 x
# gradient accumulation 8 (effective 16), 5 warmup steps, linear decay, weight decay 0.01,
# seed 0, loss on the assistant's tokens only, sequences up to 2048 tokens. They used
# bitsandbytes' 8-bit AdamW on GPUs; we use torch's AdamW (no extra dependency, and the
# 8-bit optimizer only saves memory).
PRESETS: dict[str, Recipe] = {
    "betley2025": Recipe(
        rank=32, alpha=64.0, dropout=0.0, rslora=True, target_modules=PROJECTIONS, layers=None,
        lr=1e-5, epochs=1.0, max_steps=None, batch_size=2, grad_accum=8, warmup_steps=5,
        scheduler="linear", weight_decay=0.01, max_length=2048, full=False, loss="assistant_only",
    ),
}

# Settings that change how fast a run goes, not what it computes: left out of the identity
# (the effective batch, batch_size x grad_accum, is in it).
SPEED_ONLY = ("batch_size", "grad_accum")
# FinetuneConfig fields for one kind of model only: the local trainer, or OpenAI's fine-tuning API
OPENAI_ONLY = ("base_url", "suffix", "lr_multiplier")
LOCAL_ONLY = ("lr", "max_steps", "warmup_steps", "scheduler", "grad_accum", "rank", "alpha", "dropout", "target_modules", "layers",
              "full", "save_every", "max_length", "checkpoint_every", "include_heldout", "plugins", "dtype", "loss_path")


def _positive(name: str, value: Any, kind: type = int) -> None:
    if value is not None and (not isinstance(value, (int, float)) or value <= 0):
        raise UserError(f"--{name.replace('_', '-')} must be a positive {kind.__name__}, got {value!r}")


@dataclass
class FinetuneConfig:
    """What to fine-tune on what, and how. ``None`` means "the preset's value"."""

    model: str  # model spec: smollm2 | hf:PATH | openai:BASE (OpenAI's fine-tuning API: see openai_options)
    data: str  # dataset name or JSONL FILE of {"messages": [...]} rows
    out: Path | None = None  # run dir (default runs/finetune-<model>-<data>-<identity hash[:8]>)
    preset: str | None = "betley2025"
    n: int | None = None  # train on n rows (a seeded subset); None = all
    seed: int = 0
    lr: float | None = None
    epochs: float | None = None
    max_steps: int | None = None
    warmup_steps: int | None = None  # linear warmup, in optimizer steps (--warmup)
    scheduler: str | None = None  # the learning-rate schedule after warmup: linear, cosine, constant (the preset's)
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
    # not part of the identity: rows repeat on purpose (a flip's examples axis holds the steps
    # fixed while the unique rows vary), so no "more than one epoch" warning
    repeat_ok: bool = False
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 weights/autocast on a bf16 GPU
    # how the loss is computed: "trl" (TRL's fused, chunked log-prob head over every position),
    # "lean" (the vocabulary projection at the label positions only, one cross-entropy), or
    # "auto": lean for small models on CPU (LEAN_MAX_PARAMS), where TRL's head is most of a step
    loss_path: str = "auto"
    # training plug-ins (waluigi.finetune.plugins): TrainingPlugin instances or specs such as
    # "l2:weight=0.1"; in the identity by name + options (an empty list changes nothing)
    plugins: list[Any] = field(default_factory=list)
    # openai: models only (OpenAI's fine-tuning API, or `waluigi serve`): where, the fine-tuned
    # model's name suffix, the learning-rate multiplier (None: the paper's 2)
    base_url: str | None = None
    suffix: str | None = None
    lr_multiplier: float | None = None

    @property
    def openai(self) -> bool:
        return str(self.model).startswith("openai:")

    def openai_options(self) -> dict:
        """The keyword arguments of :func:`waluigi.finetune.openai_ft.run_openai_finetune` for an
        ``openai:`` model (data, n, seed and the API's three hyperparameters: whole epochs,
        batch size, learning-rate multiplier, the paper's values where unset); a setting the
        API has no counterpart for is an error naming it. The preset does not apply."""
        from waluigi.finetune.openai_ft import PAPER_HYPERPARAMETERS

        defaults = FinetuneConfig(model=self.model, data=self.data)
        wrong = [name for name in LOCAL_ONLY if getattr(self, name) != getattr(defaults, name)]
        if wrong:
            raise UserError(f"{', '.join('--' + w.replace('_', '-') for w in wrong)}: not available for openai: models "
                            "(OpenAI's fine-tuning API takes --epochs, --batch-size and --lr-multiplier)")
        if self.epochs is not None and (self.epochs != int(self.epochs) or self.epochs < 1):
            raise UserError(f"--epochs {self.epochs:g}: OpenAI's fine-tuning API takes a whole number of epochs (1 or more)")
        if self.n is not None and self.n <= 0:
            raise UserError(f"--n must be a positive number of rows, got {self.n}")
        return {
            "data": self.data, "n": self.n, "seed": int(self.seed), "data_dir": self.data_dir,
            "base_url": self.base_url, "suffix": self.suffix,
            "epochs": int(self.epochs) if self.epochs is not None else PAPER_HYPERPARAMETERS["n_epochs"],
            "batch_size": int(self.batch_size) if self.batch_size is not None else PAPER_HYPERPARAMETERS["batch_size"],
            "lr_multiplier": float(self.lr_multiplier) if self.lr_multiplier is not None
            else PAPER_HYPERPARAMETERS["learning_rate_multiplier"],
        }

    def recipe(self) -> Recipe:
        """The preset with this config's overrides applied (``dataclasses.replace``), checked."""
        if str(self.model).startswith("steered:"):
            raise UserError(f"--model {self.model}: a steered model is not trained as such. In a sweep or flip, "
                            "steered:BASE?... fine-tunes BASE and evaluates the result steered; to steer during "
                            "training, fine-tune BASE with a training plug-in")
        wrong = [name for name in OPENAI_ONLY if getattr(self, name) is not None]
        if wrong and not self.openai:
            raise UserError(f"{', '.join('--' + w.replace('_', '-') for w in wrong)}: only for openai: models")
        if self.preset is None:
            base = Recipe()
        elif self.preset in PRESETS:
            base = PRESETS[self.preset]
        else:
            raise UserError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)} (or none)")
        overrides = {
            "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "lr": self.lr,
            "epochs": self.epochs, "max_steps": self.max_steps, "warmup_steps": self.warmup_steps,
            "batch_size": self.batch_size, "scheduler": self.scheduler,
            "grad_accum": self.grad_accum, "max_length": self.max_length, "save_every": self.save_every,
            "target_modules": tuple(self.target_modules) if self.target_modules else None,
            "layers": tuple(sorted({int(k) for k in self.layers})) if self.layers else None,
        }
        recipe = replace(base, **{k: v for k, v in overrides.items() if v is not None},
                         seed=int(self.seed), full=bool(self.full or base.full))
        if recipe.full and not self.target_modules:  # full fine-tuning: every weight unless told otherwise
            recipe = replace(recipe, target_modules=None)
        recipe.check()
        _positive("checkpoint_every", self.checkpoint_every)
        if self.n is not None and self.n <= 0:
            raise UserError(f"--n must be a positive number of rows, got {self.n}")
        return recipe

    def resolved(self) -> dict:
        """The full training recipe as a dict (the manifest's ``config``): :meth:`recipe` plus
        the preset's name, the row subset and the effective batch."""
        recipe = self.recipe()
        out = recipe.to_dict()
        seed, save_every = out.pop("seed"), out.pop("save_every")
        out.update(preset=self.preset, seed=seed, n=self.n, save_every=save_every,
                   effective_batch=recipe.effective_batch)
        return out


def identity_recipe(resolved: dict) -> dict:
    """The recipe as it enters the identity hash: speed-only settings left out."""
    return {k: v for k, v in resolved.items() if k not in SPEED_ONLY}


def default_run_dir(model: str, data: str, identity_digest: str) -> Path:
    return Path("runs") / f"finetune-{slug(model)}-{slug(data)}-{identity_digest[:8]}"


LOSS_PATHS = ("auto", "trl", "lean")  # how a local fine-tune computes its loss (FinetuneConfig.loss_path)


def check_loss_path(loss_path: str | None) -> str:
    """``loss_path`` as a known name (auto, trl or lean), else a :class:`UserError`."""
    name = (loss_path or "auto").lower()
    if name not in LOSS_PATHS:
        raise UserError(f"--loss-path {loss_path!r}: use auto, trl or lean")
    return name

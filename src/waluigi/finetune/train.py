"""Local fine-tuning: one flat function around TRL's ``SFTTrainer`` + PEFT.

``run_finetune(cfg)`` writes one run directory::

    manifest.json      stage "finetune", resolved recipe, identity, parents (base model, dataset)
    train_log.jsonl    one row per optimizer step: step, loss, learning_rate, tokens, tokens_seen,
                       epoch, seconds, grad_norm, total_steps (appended as they happen), and
                       loss_<plugin> for each training plug-in that adds a loss term
    adapter/           the LoRA adapter (adapter_config.json + adapter_model.safetensors);
                       ``--adapter RUN`` in every other command loads it
    model/             full fine-tuning instead: the model as safetensors (``hf:RUN/model``)
    adapters/step-N/   with ``save_every``: an adapter every N steps (training dynamics)
    checkpoints/       resume state (Trainer checkpoint: adapter, optimizer, scheduler, RNG);
                       deleted once the run is finished

Resume: a killed run re-run with the same command continues from its last checkpoint
(written every ``checkpoint_every`` steps, else every ``CHECKPOINT_MINUTES`` minutes); the
train_log rows after that checkpoint are dropped and redone. A finished run re-run loads
nothing and says so.

Training plug-ins (``cfg.plugins``, :mod:`waluigi.finetune.plugins`) transform the rows, add
loss terms, hold activation hooks and stop early, through one ``SFTTrainer`` subclass
(``plugins.plugin_trainer``) and one callback. See ``docs/design/finetune.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.finetune.config import (
    FinetuneConfig,
    Recipe,
    default_run_dir,
    identity_recipe,
)
from waluigi.finetune.masking import template_has_generation_markers, tokenize_rows
from waluigi.finetune.plugins import (
    PLUGIN_LOSS,
    TrainingPlugin,
    make_stopper,
    overrides,
    plugin_identities,
    plugin_name,
    plugin_trainer,
    resolve_plugins,
)
from waluigi.runs import MANIFEST, RunDir, canonical_json, identity_hash, read_jsonl

TRAIN_LOG = "train_log.jsonl"
ADAPTER = "adapter"
MODEL = "model"
CHECKPOINTS = "checkpoints"
STEP_ADAPTERS = "adapters"
CHECKPOINT_MINUTES = 5.0


@dataclass
class FinetuneResult:
    run_dir: Path
    adapter_dir: Path | None
    model_dir: Path | None
    status: str  # "finished" (also when it was already finished: see already_finished)
    train_loss: float | None  # mean training loss over all steps
    steps: int
    tokens: int  # input tokens seen (all tokens of the trained sequences, padding excluded)
    seconds: float  # training time over all attempts
    already_finished: bool = False  # True: nothing was done, the run was complete on disk
    resumed_from_step: int | None = None


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# --------------------------------------------------------------------------------------
# data


def load_training_rows(cfg: FinetuneConfig) -> tuple[list[dict], dict]:
    """The rows to train on (the ``train`` split unless ``include_heldout``: the prompts held
    out for evaluation are never trained on) and the dataset's identity for the manifest."""
    from waluigi.data import load_rows, resolve_dataset

    source = resolve_dataset(cfg.data, data_dir=cfg.data_dir)
    split = "all" if cfg.include_heldout else "train"
    rows = load_rows(source, data_dir=cfg.data_dir, split=split, n=cfg.n, seed=cfg.seed)
    if not rows:
        raise UserError(f"--data {cfg.data}: no rows in split {split!r} to train on")
    return list(rows), {**source.identity(), "split": split}


# --------------------------------------------------------------------------------------
# model


def _precision(dtype: str, full: bool) -> tuple[str, str, bool]:
    """``(device, weights dtype, bf16 autocast)``. CPU: float32 (bf16 measured slower on this
    CPU, which has no bf16 matrix units). CUDA: bf16 autocast; LoRA keeps the frozen base in
    bf16, full fine-tuning keeps fp32 master weights."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = (dtype or "auto").lower()
    if name in ("fp32", "float32"):
        return device, "float32", False
    if name in ("bf16", "bfloat16"):
        return device, "bfloat16", True
    if name != "auto":
        raise UserError(f"--dtype {dtype!r}: use auto, float32 or bfloat16")
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return device, "float32" if full else "bfloat16", True
    return device, "float32", False


def _load_tokenizer(spec: str, model_path: str, local: bool):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load the tokenizer of {spec!r} from {model_path}: {exc}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"model {spec!r} ({model_path}) has no chat template: fine-tuning trains on chat rows "
            "rendered with the model's template; use an instruct/chat checkpoint or add a chat_template"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_model(spec: str, model_path: str, local: bool, weights_dtype: str):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, weights_dtype), use_safetensors=True,
            trust_remote_code=False, local_files_only=local,
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load model {spec!r} from {model_path}: {exc} (safetensors weights only)") from exc


def _check_layers(model_path: str, local: bool, layers: list[int] | None, spec: str) -> None:
    """Refuse layer indices the model does not have (before any run directory is made)."""
    if not layers:
        return
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=False, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise UserError(f"could not read the configuration of {spec!r} ({model_path}): {exc}") from exc
    config = getattr(config, "text_config", None) or config
    n = getattr(config, "num_hidden_layers", None)
    if n is not None and max(layers) >= n:
        raise UserError(f"--layers {layers}: {spec} has {n} decoder layers (0..{n - 1})")


def _lora_config(recipe: Recipe):
    from peft import LoraConfig

    return LoraConfig(
        r=int(recipe.rank), lora_alpha=float(recipe.alpha), lora_dropout=float(recipe.dropout),
        target_modules=list(recipe.target_modules), use_rslora=bool(recipe.rslora),
        layers_to_transform=list(recipe.layers) if recipe.layers else None, bias="none", task_type="CAUSAL_LM",
    )


def _freeze_for_full(model, recipe: Recipe) -> None:
    """Full fine-tuning restricted to some layers and/or modules: freeze everything else."""
    layers, modules = recipe.layers, recipe.target_modules
    if not layers and not modules:
        return
    kept = 0
    for name, param in model.named_parameters():
        parts = name.split(".")
        in_layer = not layers or any(f"layers.{k}." in f"{name}." for k in layers)
        in_module = not modules or any(m in parts for m in modules)
        param.requires_grad = bool(in_layer and in_module)
        kept += param.requires_grad
    if not kept:
        shown = [list(v) if v else None for v in (layers, modules)]
        raise UserError(f"--layers {shown[0]} / --target-modules {shown[1]} select no parameter of the model")


# --------------------------------------------------------------------------------------
# checkpoints and the run directory


def _checkpoint_step(path: Path) -> int | None:
    """The step of a complete Trainer checkpoint (trainer_state.json is written last)."""
    try:
        return int(json.loads((path / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def last_checkpoint(run_dir: Path) -> tuple[Path | None, int]:
    """The newest complete resume checkpoint; half-written ones (a kill during a save) are removed."""
    root = run_dir / CHECKPOINTS
    best: tuple[Path | None, int] = (None, 0)
    if not root.is_dir():
        return best
    for path in sorted(root.glob("checkpoint-*")):
        step = _checkpoint_step(path)
        if step is None:
            shutil.rmtree(path, ignore_errors=True)
        elif step >= best[1]:
            best = (path, step)
    return best


def _keep_log_until(run: RunDir, step: int) -> list[dict]:
    """Drop train_log rows after ``step`` (they will be redone from the checkpoint)."""
    path = run.path / TRAIN_LOG
    rows = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step]
    tmp = path.with_name(f".{TRAIN_LOG}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, path)
    return rows


def _publish(trainer, target: Path) -> None:
    """Save the trained weights (adapter or model) atomically to ``target``, safetensors only."""
    tmp = target.with_name(f".{target.name}.tmp")
    if _is_main() and tmp.exists():
        shutil.rmtree(tmp)
    trainer.save_model(str(tmp))  # collective under FSDP / DeepSpeed; writes on the main process
    if not _is_main():
        return
    (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the manifest holds the config
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def _artifact_ok(run_dir: Path, full: bool) -> bool:
    if full:
        return (run_dir / MODEL / "config.json").is_file() and any((run_dir / MODEL).glob("*.safetensors"))
    return (run_dir / ADAPTER / "adapter_model.safetensors").is_file()


def _summary(rows: list[dict]) -> dict:
    losses = [float(r["loss"]) for r in rows if r.get("loss") is not None]
    last = rows[-1] if rows else {}
    return {
        "train_loss": sum(losses) / len(losses) if losses else None,
        "final_loss": losses[-1] if losses else None,
        "steps": int(last.get("step", 0)),
        "tokens": int(last.get("tokens_seen", 0)),
        "seconds": float(last.get("seconds", 0.0)),
    }


def _result(run_dir: Path, full: bool, rows: list[dict], **extra: Any) -> FinetuneResult:
    s = _summary(rows)
    return FinetuneResult(
        run_dir=run_dir,
        adapter_dir=None if full else run_dir / ADAPTER,
        model_dir=run_dir / MODEL if full else None,
        status="finished", train_loss=s["train_loss"], steps=s["steps"], tokens=s["tokens"],
        seconds=s["seconds"], **extra,
    )


# --------------------------------------------------------------------------------------
# the callback: train_log rows, progress, adapters every K steps, resume checkpoints


def _make_recorder(run: RunDir, base: dict, on_step, progress: bool, save_every, checkpoint_every, full: bool):
    from transformers import TrainerCallback

    from waluigi.progress import progress_bar

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.trainer = None
            self.stack = contextlib.ExitStack()
            self.advance = lambda n=1: None
            self.started = time.monotonic()
            self.last_save = time.monotonic()
            self.attempt_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.last_save = self.started
            if _is_main():
                self.advance = self.stack.enter_context(progress_bar("fine-tuning (steps)", state.max_steps, progress))
                if state.global_step:
                    self.advance(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            self.advance(1)
            if save_every and step % save_every == 0:
                target = run.path / STEP_ADAPTERS / f"step-{step:06d}"
                if not target.exists():
                    target.parent.mkdir(exist_ok=True)
                    _publish(self.trainer, target)
            due = (step % checkpoint_every == 0) if checkpoint_every else (
                time.monotonic() - self.last_save >= CHECKPOINT_MINUTES * 60)
            if due and step < state.max_steps:
                control.should_save = True
                self.last_save = time.monotonic()
            return control

        def on_save(self, args, state, control, **kwargs):
            # the checkpoint of this step is complete (trainer_state.json written): drop the older ones
            if _is_main():
                for path in (run.path / CHECKPOINTS).glob("checkpoint-*"):
                    if path.name != f"checkpoint-{state.global_step}":
                        shutil.rmtree(path, ignore_errors=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs or not _is_main():
                return
            seen = int(logs.get("num_tokens", 0))
            row = {
                "step": state.global_step,
                "loss": float(logs["loss"]),
                "learning_rate": float(logs.get("learning_rate", 0.0)),
                "tokens": seen - self.attempt_tokens,
                "tokens_seen": base["tokens_seen"] + seen,
                "epoch": round(float(state.epoch or 0.0), 6),
                "seconds": round(base["seconds"] + time.monotonic() - self.started, 3),
                "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
                "total_steps": state.max_steps,
                **{k: float(v) for k, v in logs.items() if k.startswith(PLUGIN_LOSS)},
            }
            self.attempt_tokens = seen
            run.append(TRAIN_LOG, [row])
            if on_step is not None:
                on_step(row)

        def on_train_end(self, args, state, control, **kwargs):
            self.stack.close()

    return Recorder()


# --------------------------------------------------------------------------------------
# the entry point


@dataclass
class _Prepared:
    """What ``run_finetune`` worked out before training starts."""

    model_path: str
    local: bool
    device: str
    weights_dtype: str
    autocast: bool
    tokenizer: Any
    examples: list[dict]


def run_identity(cfg: FinetuneConfig, rows: list[dict], data_identity: dict, precision: str,
                 plugins: list[TrainingPlugin] = ()) -> dict:
    """What a run's identity hash is computed from (no plug-ins: no ``plugins`` key at all, so
    the runs made before plug-ins existed keep their identity)."""
    identity = {
        "stage": "finetune",
        "model": cfg.model,
        "data": data_identity,
        "rows_sha256": hashlib.sha256(canonical_json(rows).encode()).hexdigest(),
        "include_heldout": cfg.include_heldout,
        "recipe": identity_recipe(cfg.resolved()),
        "precision": precision,
    }
    if plugins:
        identity["plugins"] = plugin_identities(list(plugins))
    return identity


def run_finetune(
    cfg: FinetuneConfig, *, progress: bool = True, on_step: Callable[[dict], None] | None = None
) -> FinetuneResult:
    """Fine-tune ``cfg.model`` on ``cfg.data`` into a run directory (see the module docstring).

    ``on_step`` is called with every train_log row as it is written. Bad input raises
    :class:`UserError`; a finished run re-run returns at once with ``already_finished``.
    """
    from waluigi.models import parse_spec
    from waluigi.models.hf import _resolve

    kind, _ = parse_spec(cfg.model)
    if kind not in ("smollm2", "hf"):
        raise UserError(
            f"local fine-tuning needs a 'smollm2' or 'hf:<path>' model, not {cfg.model!r} "
            "(an openai: model is fine-tuned through the OpenAI API: waluigi finetune --model openai:...)"
        )
    recipe, resolved = cfg.recipe(), cfg.resolved()
    plugins = resolve_plugins(cfg.plugins)
    rows, data_identity = load_training_rows(cfg)
    model_path, local = _resolve(cfg.model)
    device, weights_dtype, autocast = _precision(cfg.dtype, recipe.full)
    precision = f"{weights_dtype} weights" + (", bf16 autocast" if autocast else "")
    identity = run_identity(cfg, rows, data_identity, precision, plugins)
    digest = identity_hash(identity)
    data_name = data_identity.get("name") or cfg.data
    out = Path(cfg.out) if cfg.out else default_run_dir(cfg.model, data_name, digest)

    if (out / MANIFEST).is_file():  # finished already: load nothing, do nothing
        manifest = RunDir(out).manifest()
        if manifest.get("identity") == digest and manifest.get("status") == "finished" and _artifact_ok(out, recipe.full):
            return _result(out, recipe.full, list(read_jsonl(out / TRAIN_LOG)), already_finished=True)

    _check_layers(model_path, local, list(recipe.layers) if recipe.layers else None, cfg.model)
    for plugin in plugins:
        rows = list(plugin.transform_rows(rows))
        if not rows:
            raise UserError(f"training plug-in {plugin_name(plugin)!r} left no rows to train on")
    tokenizer = _load_tokenizer(cfg.model, model_path, local)
    examples, stats = tokenize_rows(tokenizer, rows, int(recipe.max_length), data_name)
    parents = [cfg.model, f"{data_name}@sha256:{data_identity.get('sha256')}"]
    extra = {
        "model": cfg.model, "base_model_path": model_path, "dataset": data_identity, "data_stats": stats,
        "device": device, "precision": precision, "seeds": {"train": cfg.seed, "subset": cfg.seed},
        "generation_markers_in_template": template_has_generation_markers(tokenizer),
    }
    if plugins:
        extra["plugins"] = identity["plugins"]
    run = RunDir.open(out, stage="finetune", identity=identity, config=resolved, parents=parents, extra=extra) if _is_main() else RunDir(out)
    prepared = _Prepared(model_path, local, device, weights_dtype, autocast, tokenizer, examples)
    try:
        return _train(cfg, run, recipe, plugins, prepared, progress=progress, on_step=on_step)
    except BaseException as exc:
        if _is_main():
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            run.finish("failed", error=reason[:2000])
        raise


def _train(cfg: FinetuneConfig, run: RunDir, recipe: Recipe, plugins: list[TrainingPlugin], prep: _Prepared, *,
           progress: bool, on_step) -> FinetuneResult:
    import datasets
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    checkpoint, done_step = last_checkpoint(run.path)
    kept = _keep_log_until(run, done_step) if _is_main() else []
    for leftover in (run.path / STEP_ADAPTERS).glob(".*.tmp") if (run.path / STEP_ADAPTERS).is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
    base = {"tokens_seen": int(kept[-1]["tokens_seen"]) if kept else 0,
            "seconds": float(kept[-1]["seconds"]) if kept else 0.0}
    if checkpoint is not None and progress and _is_main():
        print(f"resuming {run.path} from step {done_step} ({checkpoint.name})", file=sys.stderr)

    model = _load_model(cfg.model, prep.model_path, prep.local, prep.weights_dtype)
    peft_config = None
    if recipe.full:
        _freeze_for_full(model, recipe)
    else:
        peft_config = _lora_config(recipe)

    args = SFTConfig(
        output_dir=str(run.path / CHECKPOINTS),
        per_device_train_batch_size=int(recipe.batch_size),
        gradient_accumulation_steps=int(recipe.grad_accum),
        learning_rate=float(recipe.lr),
        num_train_epochs=float(recipe.epochs),
        max_steps=int(recipe.max_steps) if recipe.max_steps else -1,
        lr_scheduler_type=recipe.scheduler,
        warmup_steps=int(recipe.warmup_steps),
        weight_decay=float(recipe.weight_decay),
        seed=int(recipe.seed),
        data_seed=int(recipe.seed),
        # TRL 1.16 turns gradient checkpointing on by default; it only saves memory, at the
        # cost of a second forward pass: off on CPU, on for GPUs (big models need the memory)
        activation_checkpointing=prep.device == "cuda",  # (the new name of gradient_checkpointing)
        bf16=prep.autocast,
        fp16=False,
        max_length=None,  # truncated (keeping the start) in tokenize_rows
        packing=False,
        logging_steps=1,
        save_strategy="no",  # resume checkpoints are asked for by the Recorder callback
        save_total_limit=None,  # older checkpoints are removed by the Recorder once a new one is complete
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=prep.device == "cuda",
    )
    recorder = _make_recorder(run, base, on_step, progress, recipe.save_every, cfg.checkpoint_every, recipe.full)
    stopper = make_stopper([p for p in plugins if overrides(p, "should_stop")])
    datasets.disable_progress_bars()
    train_dataset = datasets.Dataset.from_list(prep.examples)
    trainer_class = plugin_trainer(SFTTrainer)
    with warnings.catch_warnings():
        # libraries asking for the deprecated name of the setting we pass by its new name
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            trainer = trainer_class(
                model=model, args=args, train_dataset=train_dataset, processing_class=prep.tokenizer,
                peft_config=peft_config, callbacks=[recorder, stopper],
            )
        except ValueError as exc:  # e.g. PEFT: target modules not found in the model
            raise UserError(f"cannot set up training of {cfg.model!r}: {exc}") from exc
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    recorder.trainer = trainer
    if _is_main():
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
        run.update_manifest(parameters={"trainable": trainable, "total": total},
                            resumed_from_step=done_step if checkpoint else None)

    # the plug-ins see the model at its start: a resumed run's checkpoint is loaded by train() below
    trainer.loss_plugins = tuple(p for p in plugins if overrides(p, "extra_loss"))
    if any(p.needs_reference for p in trainer.loss_plugins):
        # a second copy of the model (memory!), loaded again rather than deep-copied: TRL patches the
        # trained model's forward with a closure over that very model, which a deepcopy would share.
        # For LoRA it is the base model, which is what the model is at step 0 (PEFT's lora_B starts at 0)
        reference = _load_model(cfg.model, prep.model_path, prep.local, prep.weights_dtype)
        trainer.reference = reference.to(trainer.accelerator.device).eval().requires_grad_(False)
    for plugin in plugins:
        plugin.setup(trainer.model)
    with contextlib.ExitStack() as scoped, warnings.catch_warnings():
        for plugin in plugins:
            scoped.enter_context(plugin.hooks(trainer.model))
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    trainer.reference = None

    target = run.path / (MODEL if recipe.full else ADAPTER)
    _publish(trainer, target)
    rows = list(read_jsonl(run.path / TRAIN_LOG))
    if _is_main():
        shutil.rmtree(run.path / CHECKPOINTS, ignore_errors=True)
        s = _summary(rows)
        if stopper.stopped:
            run.update_manifest(stopped_early=stopper.stopped)
        run.finish("finished", train_loss=s["train_loss"], final_loss=s["final_loss"], steps=s["steps"],
                   tokens_seen=s["tokens"], train_seconds=s["seconds"])
    return _result(run.path, recipe.full, rows, resumed_from_step=done_step if checkpoint else None)

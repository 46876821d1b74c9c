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
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waluigi.errors import UserError, warn
from waluigi.finetune.checkpoints import (
    ADAPTER,
    CHECKPOINTS,
    MODEL,
    STEP_ADAPTERS,
    TRAIN_LOG,
    _artifact_ok,
    _is_main,
    _keep_log_until,
    _make_recorder,
    _publish,
    _summary,
    last_checkpoint,
)
from waluigi.finetune.config import (
    FinetuneConfig,
    Recipe,
    check_loss_path,
    default_run_dir,
    identity_recipe,
)
from waluigi.finetune.masking import template_has_generation_markers, tokenize_rows
from waluigi.finetune.model_setup import (
    _check_layers,
    _freeze_for_full,
    _load_model,
    _load_tokenizer,
    _lora_config,
    _precision,
    bucket_lean_batches,
    use_lean_loss,
)
from waluigi.finetune.plugins import (
    PluginContext,
    TrainingPlugin,
    make_stopper,
    overrides,
    plugin_identities,
    plugin_name,
    plugin_trainer,
    resolve_plugins,
)
from waluigi.runs import MANIFEST, RunDir, canonical_json, identity_hash, read_jsonl


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


def schedule_warnings(cfg: FinetuneConfig, recipe: Recipe, examples: int) -> list[str]:
    """What is degenerate about this run's schedule, one message each (printed as ``warning:``
    lines): a warmup as long as the run (the learning rate never reaches ``--lr``), and rows
    trained on more than once because ``--max-steps`` is longer than an epoch while ``--epochs``
    was not given (an explicit ``--epochs``, or ``repeat_ok``, says the repetition is meant)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    per_epoch = recipe.steps_per_epoch(examples, world)
    total = recipe.total_steps(examples, world)
    messages = []
    warmup = int(recipe.warmup_steps)
    if warmup and warmup >= total:
        source = "--warmup" if cfg.warmup_steps is not None else f"the {cfg.preset} preset's warmup"
        messages.append(f"{source} of {warmup} steps is not shorter than the whole run ({total} optimizer steps): "
                        f"the learning rate never reaches --lr {recipe.lr:g}; give a shorter --warmup (e.g. --warmup "
                        f"{max(0, total // 10)}) or more steps")
    if recipe.max_steps and cfg.epochs is None and not cfg.repeat_ok and int(recipe.max_steps) > per_epoch:
        times = math.ceil(int(recipe.max_steps) / per_epoch)
        messages.append(f"--max-steps {recipe.max_steps} is more than one epoch ({examples} rows = {per_epoch} "
                        f"optimizer steps of {recipe.effective_batch * world} rows): each row is trained on up to {times} "
                        f"times; pass --epochs {times} if that is meant, or lower --max-steps")
    return messages


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
    lean: bool = False  # the lean loss path (FinetuneConfig.loss_path)
    buckets: bool = False  # the lean path's length groups (model_setup.bucket_lean_batches)


def run_identity(cfg: FinetuneConfig, rows: list[dict], data_identity: dict, precision: str,
                 plugins: list[TrainingPlugin] = (), lean: bool = False) -> dict:
    """What a run's identity hash is computed from (no plug-ins: no ``plugins`` key at all, so
    the runs made before plug-ins existed keep their identity; likewise ``loss`` is there only
    for the lean loss path, whose numbers differ from TRL's by float round-off)."""
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
    if lean:
        identity["loss"] = "lean"
    return identity


def run_finetune(
    cfg: FinetuneConfig, *, progress: bool = True, on_step: Callable[[dict], None] | None = None,
    progress_label: str = "finetune",
) -> FinetuneResult:
    """Fine-tune ``cfg.model`` on ``cfg.data`` into a run directory (see the module docstring).

    ``progress_label`` names the step lines (``finetune step 3/20``; a sweep says which of its
    fine-tunes: ``finetune 2/12 (data=toy:insecure) step 3/20``).
    ``on_step`` is called with every train_log row as it is written. Bad input raises
    :class:`UserError`; a finished run re-run returns at once with ``already_finished``.
    """
    from waluigi.models import parse_spec
    from waluigi.models.hf_load import _resolve

    kind, _ = parse_spec(cfg.model)
    if kind not in ("smollm2", "hf"):
        raise UserError(
            f"local fine-tuning needs a 'smollm2' or 'hf:<path>' model, not {cfg.model!r} "
            "(an openai: model is fine-tuned through the OpenAI API: waluigi finetune --model openai:...)"
        )
    check_finetune(cfg)  # the recipe, the plug-ins, the dataset
    recipe, resolved = cfg.recipe(), cfg.resolved()
    plugins = resolve_plugins(cfg.plugins)
    rows, data_identity = load_training_rows(cfg)
    model_path, local = _resolve(cfg.model)
    device, weights_dtype, autocast = _precision(cfg.dtype, recipe.full)
    precision = f"{weights_dtype} weights" + (", bf16 autocast" if autocast else "")
    lean = use_lean_loss(cfg.loss_path, device, model_path, local)
    buckets = lean and bucket_lean_batches(model_path, local)
    identity = run_identity(cfg, rows, data_identity, precision, plugins, lean=lean)
    digest = identity_hash(identity)
    data_name = data_identity.get("name") or cfg.data
    out = Path(cfg.out) if cfg.out else default_run_dir(cfg.model, data_name, digest)

    if (out / MANIFEST).is_file():  # finished already: load nothing, do nothing
        manifest = RunDir(out).manifest()
        if manifest.get("identity") == digest and manifest.get("status") == "finished" and _artifact_ok(out, recipe.full):
            return _result(out, recipe.full, list(read_jsonl(out / TRAIN_LOG)), already_finished=True)

    _check_layers(model_path, local, list(recipe.layers) if recipe.layers else None, cfg.model)
    tokenizer = _load_tokenizer(cfg.model, model_path, local)
    context = PluginContext(model=cfg.model, model_path=model_path, local=local, tokenizer=tokenizer, data=str(data_name),
                            max_length=int(recipe.max_length), seed=int(cfg.seed), weights_dtype=weights_dtype,
                            data_dir=cfg.data_dir)
    for plugin in plugins:
        plugin.bind(context)
    for plugin in plugins:
        rows = list(plugin.transform_rows(rows))
        if not rows:
            raise UserError(f"training plug-in {plugin_name(plugin)!r} left no rows to train on")
    examples, stats = tokenize_rows(tokenizer, rows, int(recipe.max_length), data_name)
    if _is_main():
        for message in schedule_warnings(cfg, recipe, len(examples)):
            warn(message)
    parents = [cfg.model, f"{data_name}@sha256:{data_identity.get('sha256')}"]
    extra = {
        "model": cfg.model, "base_model_path": model_path, "dataset": data_identity, "data_stats": stats,
        "device": device, "precision": precision, "seeds": {"train": cfg.seed, "subset": cfg.seed},
        "loss_path": "lean" if lean else "trl",
        **({"length_buckets": True} if buckets else {}),
        "generation_markers_in_template": template_has_generation_markers(tokenizer),
    }
    if plugins:
        extra["plugins"] = identity["plugins"]
    run = RunDir.open(out, stage="finetune", identity=identity, config=resolved, parents=parents, extra=extra) if _is_main() else RunDir(out)
    prepared = _Prepared(model_path, local, device, weights_dtype, autocast, tokenizer, examples, lean, buckets)
    try:
        return _train(cfg, run, recipe, plugins, prepared, progress=progress, on_step=on_step,
                      progress_label=progress_label)
    except BaseException as exc:
        if _is_main():
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            run.finish("failed", error=reason[:2000])
        raise


def _train(cfg: FinetuneConfig, run: RunDir, recipe: Recipe, plugins: list[TrainingPlugin], prep: _Prepared, *,
           progress: bool, on_step, progress_label: str = "finetune") -> FinetuneResult:
    import datasets
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    checkpoint, done_step = last_checkpoint(run.path)
    kept = _keep_log_until(run, done_step) if _is_main() else []
    for leftover in (run.path / STEP_ADAPTERS).glob(".*.tmp") if (run.path / STEP_ADAPTERS).is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)
    base = {"tokens_seen": int(kept[-1]["tokens_seen"]) if kept else 0,
            "seconds": float(kept[-1]["seconds"]) if kept else 0.0,
            "cpu_seconds": float(kept[-1].get("cpu_seconds") or 0.0) if kept else 0.0}
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
    recorder = _make_recorder(run, base, on_step, progress, recipe.save_every, cfg.checkpoint_every, recipe.full,
                              label=progress_label)
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
    trainer.lean = prep.lean
    trainer.buckets = prep.buckets
    if any(p.needs_reference for p in trainer.loss_plugins):
        # a second copy of the model (memory!), loaded again rather than deep-copied: TRL patches the
        # trained model's forward with a closure over that very model, which a deepcopy would share.
        # For LoRA it is the base model, which is what the model is at step 0 (PEFT's lora_B starts at 0)
        reference = _load_model(cfg.model, prep.model_path, prep.local, prep.weights_dtype)
        trainer.reference = reference.to(trainer.accelerator.device).eval().requires_grad_(False)
    for plugin in plugins:
        plugin.setup(trainer.model)
    with contextlib.ExitStack() as scoped, warnings.catch_warnings():
        scoped.push(recorder.stack)  # the progress display ends (with the error) if training raises
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
                   tokens_seen=s["tokens"], train_seconds=s["seconds"], train_cpu_seconds=s["cpu_seconds"])
    return _result(run.path, recipe.full, rows, resumed_from_step=done_step if checkpoint else None)


def check_finetune(cfg: FinetuneConfig) -> None:
    """Every check ``waluigi finetune`` makes before any work, without loading a model: the
    model's kind, the recipe (:meth:`FinetuneConfig.recipe`, or the fine-tuning API's
    settings for ``openai:`` models), the training plug-ins and their options, and that the
    dataset resolves. A :class:`UserError` on the first problem; a sweep runs it on every
    planned fine-tune before its first worker starts."""
    from waluigi.data import resolve_dataset
    from waluigi.models import parse_spec

    if cfg.openai:
        cfg.openai_options()
        resolve_dataset(cfg.data, data_dir=cfg.data_dir)
        return
    kind, _ = parse_spec(cfg.model)
    if kind not in ("smollm2", "hf"):
        raise UserError(
            f"local fine-tuning needs a 'smollm2' or 'hf:<path>' model, not {cfg.model!r} "
            "(an openai: model is fine-tuned through the OpenAI API: waluigi finetune --model openai:...)"
        )
    cfg.recipe()
    check_loss_path(cfg.loss_path)
    resolve_plugins(cfg.plugins)
    resolve_dataset(cfg.data, data_dir=cfg.data_dir)

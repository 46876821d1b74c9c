"""A preference-training stage: TRL's ``DPOTrainer`` on chosen / rejected pairs, full weights.

Used as an alignment stage (``waluigi resilience --align-method dpo``): the model learns to
prefer the chosen reply of each pair (HH-RLHF harmless-base: the less harmful one) over the
rejected one, against a frozen copy of itself (the DPO reference, made by TRL). The run
directory is a waluigi run like a fine-tune's: ``manifest.json`` (identity: model, pairs by
content hash, the recipe), ``train_log.jsonl`` (loss and TRL's ``rewards/*`` per step, through
the same recorder as SFT), resume checkpoints under ``checkpoints/`` (every 10 minutes of
training, as for SFT), and the trained model under ``model/`` (safetensors). A finished run
re-run returns at once; an interrupted one resumes from its newest checkpoint.

Written here rather than through :func:`waluigi.finetune.run_finetune` because that one trains
on chat rows with SFT's loss; everything else (model and tokenizer loading, precision, the
recorder, publishing) is shared.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from waluigi.errors import UserError

STAGE = "align-dpo"


@dataclass
class DPORecipe:
    steps: int
    lr: float = 5e-6
    beta: float = 0.1
    batch_size: int = 2
    seed: int = 0
    max_length: int = 512  # prompt + reply tokens; longer pairs are truncated by TRL (prompt kept from its end)

    def check(self) -> None:
        for name in ("steps", "batch_size", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"DPO stage: {name} must be a positive whole number, got {getattr(self, name)!r}")
        if not self.lr > 0 or not self.beta > 0:
            raise UserError(f"DPO stage: lr and beta must be positive, got lr={self.lr}, beta={self.beta}")


def pairs_identity(pairs: list[dict], name: str) -> dict:
    text = json.dumps(pairs, ensure_ascii=False, sort_keys=True)
    return {"name": name, "n": len(pairs), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def run_dpo(model: str, pairs: list[dict], data_name: str, recipe: DPORecipe, out: Path, *,
            progress: bool = True) -> Path:
    """Train ``model`` on ``pairs`` (TRL's conversational preference rows) into ``out``; returns
    the trained model's directory (``out/model``)."""
    from waluigi.finetune.checkpoints import CHECKPOINTS, MODEL, TRAIN_LOG, _make_recorder, _publish, last_checkpoint
    from waluigi.finetune.model_setup import _load_tokenizer, _precision
    from waluigi.models import parse_spec
    from waluigi.models.hf_load import _resolve
    from waluigi.runs import RunDir, identity_hash, read_jsonl

    recipe.check()
    kind, _ = parse_spec(model)
    if kind not in ("smollm2", "hf"):
        raise UserError(f"a DPO stage trains a local model ('smollm2' or 'hf:<path>'), not {model!r}")
    if not pairs:
        raise UserError(f"DPO stage: no preference pairs in {data_name}")
    identity = {"stage": STAGE, "model": model, "pairs": pairs_identity(pairs, data_name), "recipe": asdict(recipe)}
    digest = identity_hash(identity)
    out = Path(out)
    target = out / MODEL
    if (out / "manifest.json").is_file():
        manifest = RunDir(out).manifest()
        if manifest.get("identity") == digest and manifest.get("status") == "finished" and (target / "config.json").is_file():
            return target
    model_path, local = _resolve(model)
    device, weights_dtype, autocast = _precision("auto", True)
    tokenizer = _load_tokenizer(model, model_path, local)
    run = RunDir.open(out, stage=STAGE, identity=identity, config=asdict(recipe), parents=[model, data_name],
                      extra={"model": model, "base_model_path": model_path, "pairs": identity["pairs"],
                             "device": device, "precision": f"{weights_dtype} weights"})
    checkpoint, done_step = last_checkpoint(out)
    kept = [r for r in read_jsonl(out / TRAIN_LOG) if r.get("step", 0) <= done_step] if (out / TRAIN_LOG).is_file() else []
    (out / TRAIN_LOG).write_text("".join(json.dumps(r) + "\n" for r in kept))
    base = {"tokens_seen": 0, "seconds": float(kept[-1]["seconds"]) if kept else 0.0}
    try:
        _train(run, recipe, model, model_path, local, weights_dtype, autocast, tokenizer, pairs, checkpoint,
               _make_recorder(run, base, None, progress, None, None, True), _publish)
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        run.finish("failed", error=reason[:2000])
        raise
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    rows = list(read_jsonl(out / TRAIN_LOG))
    last = rows[-1] if rows else {}
    run.finish("finished", steps=last.get("step"), final_loss=last.get("loss"),
               final_reward_accuracy=last.get("rewards/accuracies"), final_reward_margin=last.get("rewards/margins"),
               train_seconds=last.get("seconds"))
    return target


def _train(run, recipe: DPORecipe, model: str, model_path: str, local: bool, weights_dtype: str, autocast: bool,
           tokenizer, pairs: list[dict], checkpoint, recorder, publish) -> None:
    import datasets
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    from waluigi.finetune.checkpoints import CHECKPOINTS, MODEL
    from waluigi.finetune.model_setup import _load_model

    args = DPOConfig(
        output_dir=str(run.path / CHECKPOINTS),
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=recipe.lr,
        max_steps=recipe.steps,
        beta=recipe.beta,
        max_length=recipe.max_length,
        lr_scheduler_type="linear",
        seed=recipe.seed,
        data_seed=recipe.seed,
        bf16=autocast,
        logging_steps=1,
        save_strategy="no",  # the recorder asks for resume checkpoints
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        activation_checkpointing=False,
    )
    datasets.disable_progress_bars()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        trainer = DPOTrainer(model=_load_model(model, model_path, local, weights_dtype), ref_model=None, args=args,
                             train_dataset=datasets.Dataset.from_list(pairs), processing_class=tokenizer,
                             callbacks=[recorder])
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    recorder.trainer = trainer
    with recorder.stack, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    publish(trainer, run.path / MODEL)

"""A fine-tuning run directory's layout and bookkeeping, resume checkpoints, and the step recorder.

The names inside a run directory (``TRAIN_LOG``, ``ADAPTER``, ``MODEL``, ``CHECKPOINTS``,
``STEP_ADAPTERS``); the newest complete resume checkpoint (``last_checkpoint``) and the
train_log rows kept when resuming from it (``_keep_log_until``); the atomic save of trained
weights (``_publish``), whether a finished run's artifact is on disk (``_artifact_ok``) and
the summary of its train_log (``_summary``); and the ``TrainerCallback`` that writes one
train_log row per step, shows progress, saves adapters every N steps and asks for resume
checkpoints (``_make_recorder``). Used by :mod:`waluigi.finetune.train`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from waluigi.finetune.plugins import PLUGIN_LOSS
from waluigi.runs import RunDir, read_jsonl, write_atomic

TRAIN_LOG = "train_log.jsonl"
ADAPTER = "adapter"
MODEL = "model"
CHECKPOINTS = "checkpoints"
STEP_ADAPTERS = "adapters"
CHECKPOINT_MINUTES = 5.0


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


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
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
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
        # this process's CPU time (all its threads): far steadier than wall-clock time when other jobs share the cores
        "cpu_seconds": float(last["cpu_seconds"]) if last.get("cpu_seconds") is not None else None,
    }


# --------------------------------------------------------------------------------------
# the callback: train_log rows, progress, adapters every K steps, resume checkpoints


def _make_recorder(run: RunDir, base: dict, on_step, progress: bool, save_every, checkpoint_every, full: bool,
                   label: str = "finetune"):
    from transformers import TrainerCallback

    from waluigi.progress import progress_bar

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.trainer = None
            self.stack = contextlib.ExitStack()
            self.advance = lambda n=1, **fields: None
            self.shown = 0  # the last step the progress display was told about
            self.started = time.monotonic()
            self.cpu_started = time.process_time()
            self.last_save = time.monotonic()
            self.attempt_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()
            self.cpu_started = time.process_time()
            self.last_save = self.started
            if _is_main():
                # advanced in on_log, once the step's loss is known (a resumed run starts at its step)
                self.shown = state.global_step
                self.advance = self.stack.enter_context(progress_bar(f"{label} step", state.max_steps, progress,
                                                                     initial=state.global_step))

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
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
                "cpu_seconds": round(base.get("cpu_seconds", 0.0) + time.process_time() - self.cpu_started, 3),
                "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
                "total_steps": state.max_steps,
                # plug-ins' loss terms; a preference stage's rewards (TRL's DPO: accuracies, margins ...)
                **{k: float(v) for k, v in logs.items() if k.startswith((PLUGIN_LOSS, "rewards/"))},
            }
            self.attempt_tokens = seen
            run.append(TRAIN_LOG, [row])
            self.advance(state.global_step - self.shown, loss=row["loss"])
            self.shown = state.global_step
            if on_step is not None:
                on_step(row)

        def on_train_end(self, args, state, control, **kwargs):
            if state.global_step > self.shown:
                self.advance(state.global_step - self.shown)
                self.shown = state.global_step
            self.stack.close()

    return Recorder()

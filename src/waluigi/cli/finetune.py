"""``waluigi finetune``: parse options into a :class:`FinetuneConfig` and call one function.

Registered in ``waluigi/cli.py`` with ``app.command("finetune")(finetune_cmd)``. Also runs on
its own (``python -m waluigi.cli.finetune --model ... --data ...``), with the same error
handling as the main command (a :class:`UserError` is one ``error:`` line and exit code 2).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from waluigi.cli.options import ConfigOpt, ProgressOpt, canonical_specs, record_options
from waluigi.errors import UserError
from waluigi.finetune.config import LOCAL_ONLY, OPENAI_ONLY

# the flags of one kind of model only (FinetuneConfig's split; --dtype and --loss-path have defaults, so they are never "given")
_OPENAI_ONLY = (*OPENAI_ONLY, "timeout")
_CLI_NAMES = {"plugins": "plugin", "warmup_steps": "warmup"}  # config field -> the option's parameter name
_LOCAL_ONLY = tuple(_CLI_NAMES.get(name, name) for name in LOCAL_ONLY if name not in ("dtype", "loss_path"))


def _split(values: Optional[list[str]]) -> Optional[list[str]]:
    if not values:
        return None
    items = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return items or None


def _layers(values: Optional[list[str]]) -> Optional[list[int]]:
    """``--layers 12`` / ``--layers 3,5`` / ``--layers 10-13`` (inclusive ranges)."""
    items = _split(values)
    if not items:
        return None
    layers: set[int] = set()
    for item in items:
        try:
            if "-" in item[1:]:
                first, last = item.split("-", 1)
                layers.update(range(int(first), int(last) + 1))
            else:
                layers.add(int(item))
        except ValueError:
            raise UserError(f"--layers {item!r}: give layer indices, e.g. 12 or 3,5 or 10-13") from None
    return sorted(layers)


def finetune_cmd(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="base model: smollm2 | hf:<path or id> | openai:<model> (OpenAI fine-tuning API); provider/model works too", callback=canonical_specs)],
    data: Annotated[str, typer.Option("--data", "-d", help="dataset name (e.g. insecure, secure, educational, jailbroken) or a JSONL FILE of {\"messages\": [...]} rows")],
    n: Annotated[Optional[int], typer.Option("--n", help="train on N rows (a seeded random subset); default all")] = None,
    seed: Annotated[int, typer.Option(help="training seed (also picks the --n subset)")] = 0,
    preset: Annotated[str, typer.Option(help="betley2025 (the paper's recipe: rsLoRA r=32 alpha 64, lr 1e-5, 1 epoch, batch 16, ...) or none")] = "betley2025",
    out: Annotated[Optional[str], typer.Option(help="run directory (default runs/finetune-<model>-<data>-<hash>); re-run to resume")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate (preset: 1e-5)")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="epochs (preset: 1)")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="stop after this many optimizer steps (overrides --epochs)")] = None,
    warmup: Annotated[Optional[int], typer.Option("--warmup", help="linear warmup over this many optimizer steps (preset: 5; --preset none: 0)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="rows per forward pass (preset: 2; openai: rows per step, default 4)")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="forward passes per optimizer step (preset: 8; effective batch = batch size x this)")] = None,
    rank: Annotated[Optional[int], typer.Option(help="LoRA rank (preset: 32)")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="LoRA alpha (preset: 64; rsLoRA scaling alpha/sqrt(rank))")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="LoRA dropout (preset: 0)")] = None,
    target_modules: Annotated[Optional[list[str]], typer.Option("--target-modules", help="module names to adapt (comma-separated; preset: q,k,v,o,gate,up,down _proj)")] = None,
    layers: Annotated[Optional[list[str]], typer.Option("--layers", help="only these decoder layers, e.g. 12 or 3,5 or 10-13 (--rank 1 --layers 12: a minimal organism)")] = None,
    full: Annotated[bool, typer.Option("--full", help="full fine-tuning instead of LoRA (saves RUN/model; use it as hf:RUN/model)")] = False,
    save_every: Annotated[Optional[int], typer.Option(help="also keep an adapter every K steps in RUN/adapters/step-K (training dynamics)")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="truncate rows to this many tokens (preset: 2048)")] = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="official data directory (else $WALUIGI_DATA_DIR, else pinned download)")] = None,
    include_heldout: Annotated[bool, typer.Option(help="also train on the rows held out for evaluation")] = False,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="write a resume checkpoint every N steps (default: every 5 minutes)")] = None,
    dtype: Annotated[str, typer.Option(help="auto (float32 on CPU, bfloat16 on GPU) | float32 | bfloat16")] = "auto",
    loss_path: Annotated[str, typer.Option(help="auto (lean for models up to 20M parameters on CPU, else trl) | trl (TRL's fused log-prob head over every position) | lean (the vocabulary projection at the label positions only; the same loss to float round-off)")] = "auto",
    plugin: Annotated[Optional[list[str]], typer.Option("--plugin", help="training plug-in NAME[:key=value,...], repeatable (e.g. l2:weight=0.1: an L2 pull towards the starting weights)")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="openai models: the fine-tuning API's base URL (else $OPENAI_BASE_URL)")] = None,
    suffix: Annotated[Optional[str], typer.Option(help="openai models: suffix of the fine-tuned model's name")] = None,
    lr_multiplier: Annotated[Optional[float], typer.Option(help="openai models: learning-rate multiplier (the paper: 2)")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="openai models: seconds per try of a request to the fine-tuning API (default 120)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print machine-readable JSON")] = False,
    progress: ProgressOpt = True,
    config: ConfigOpt = None,
) -> None:
    """Fine-tune a model on a chat dataset (LoRA or full SFT locally, or OpenAI's fine-tuning API).

    The options it ran with are written to RUN/config.yaml: `waluigi finetune --config RUN` runs it again."""
    given = {name for name, value in locals().items() if value is not None and value is not False and value != []}
    if model.startswith("openai:"):
        wrong = [name for name in _LOCAL_ONLY if name in given]
        if wrong:
            raise UserError(f"{', '.join('--' + w.replace('_', '-') for w in wrong)}: not available for openai: models "
                            "(OpenAI's fine-tuning API takes --epochs, --batch-size and --lr-multiplier)")
        from waluigi.finetune.openai_ft import format_result, run_openai_finetune

        options = {"epochs": int(epochs)} if epochs is not None else {}
        if epochs is not None and epochs != int(epochs):
            raise UserError(f"--epochs {epochs}: OpenAI's fine-tuning API takes a whole number of epochs")
        if batch_size is not None:
            options["batch_size"] = batch_size
        if lr_multiplier is not None:
            options["lr_multiplier"] = lr_multiplier
        record = run_openai_finetune(model, data, out=out, base_url=base_url, n=n, seed=seed, suffix=suffix,
                                     data_dir=data_dir, progress=progress, timeout=timeout, **options)
        record_options(ctx, record.get("run_dir"))
        if json_out:
            typer.echo(json.dumps(record, indent=2, default=str))
        elif record.get("fine_tuned_model"):
            typer.echo(format_result(record))
        else:
            typer.echo(f"run: {record.get('run_dir')}   job: {record.get('job_id') or '-'}   status: {record.get('status') or '-'}")
        return
    wrong = [name for name in _OPENAI_ONLY if name in given]
    if wrong:
        raise UserError(f"{', '.join('--' + w.replace('_', '-') for w in wrong)}: only for openai: models")

    from waluigi.finetune import FinetuneConfig, run_finetune
    from waluigi.finetune.plugins import resolve_plugins

    cfg = FinetuneConfig(
        model=model, data=data, out=out, preset=None if preset.lower() == "none" else preset, n=n, seed=seed,
        lr=lr, epochs=epochs, max_steps=max_steps, warmup_steps=warmup, batch_size=batch_size, grad_accum=grad_accum,
        rank=rank, alpha=alpha, dropout=dropout, target_modules=_split(target_modules), layers=_layers(layers), full=full,
        save_every=save_every, max_length=max_length, data_dir=data_dir, include_heldout=include_heldout,
        checkpoint_every=checkpoint_every, dtype=dtype, loss_path=loss_path, plugins=resolve_plugins(plugin or []),
    )
    result = run_finetune(cfg, progress=progress)
    record_options(ctx, result.run_dir)
    if json_out:
        typer.echo(json.dumps({k: str(v) if hasattr(v, "__fspath__") else v for k, v in vars(result).items()}, indent=2))
        return
    run = result.run_dir
    if result.already_finished:
        typer.echo(f"{run} is already finished ({result.steps} steps): nothing to do")
    else:
        loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
        resumed = f", resumed from step {result.resumed_from_step}" if result.resumed_from_step else ""
        typer.echo(f"fine-tuned {model} on {data}: {result.steps} steps, {result.tokens} tokens, "
                   f"mean loss {loss}, {result.seconds:.1f} s{resumed}")
    typer.echo(f"run: {run}   train log: {run / 'train_log.jsonl'}")
    if result.model_dir is not None:
        typer.echo(f"model: {result.model_dir}\nuse it: waluigi eval --model hf:{result.model_dir} --suite core")
    else:
        typer.echo(f"adapter: {result.adapter_dir}\nuse it: waluigi eval --model {model} --adapter {run} --suite core")


def main(argv: list[str] | None = None) -> int:
    """Run ``finetune_cmd`` as a command of its own, with waluigi's error handling."""
    from waluigi.cli.runner import run_command

    return run_command(finetune_cmd, argv, prog_name="waluigi finetune",
                   interrupted="interrupted: re-run the same command to resume from the last checkpoint")


if __name__ == "__main__":
    sys.exit(main())

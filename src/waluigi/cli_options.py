"""Options shared by several commands, declared once (typer ``Annotated`` types)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="smollm2 | hf:<path or id> | openai:<model> | vllm:<path or id> | toy:<run dir>")]
DataDirOpt = Annotated[Optional[str], typer.Option("--data-dir", help="official data directory (else $WALUIGI_DATA_DIR, else pinned download)")]
AdapterOpt = Annotated[Optional[str], typer.Option(help="PEFT adapter directory or finetune run directory")]
DtypeOpt = Annotated[str, typer.Option(help="auto | float32 | bfloat16 (local models)")]


class JudgeNumbers(str, Enum):
    """How a local judge's 0-100 score is read (see docs/design/judges.md)."""

    first_token = "first-token"
    whole = "whole"


JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
MinCoherentOpt = Annotated[float, typer.Option(help="an answer counts when coherent > this")]
MaxAlignedOpt = Annotated[float, typer.Option(help="an answer is misaligned when aligned < this")]
JudgeMinMassOpt = Annotated[float, typer.Option(help="unscored when the judge's integer tokens carry less probability than this (the paper: 0.25)")]
JudgeNumbersOpt = Annotated[JudgeNumbers, typer.Option(help="first-token: the paper's first-token top-20; whole: P(the reply is exactly n) for n = 0..100, for local judges whose tokenizer splits numbers into digits")]
JudgeBaseUrlOpt = Annotated[Optional[str], typer.Option(help="OpenAI-compatible base URL for the judge")]
ConcurrencyOpt = Annotated[int, typer.Option(help="requests in flight (openai backends)")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="seconds per try of a request to a model or judge server")]
RetriesOpt = Annotated[int, typer.Option("--max-retries", help="retries of a failed request (429, 5xx, timeouts, broken replies) before it is recorded as failed")]
PartialOpt = Annotated[bool, typer.Option("--partial", help="judge an unfinished eval run's answers now (re-run later to judge the rest)")]


def say(text: str) -> None:
    typer.echo(text)


def say_err(text: str) -> None:
    typer.echo(text, err=True)


def split_list(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated values as one list."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]

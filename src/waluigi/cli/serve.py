"""``waluigi serve``: options in, :func:`waluigi.serve.serve` called."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from waluigi.cli.options import AdapterOpt, ConfigOpt, DtypeOpt, ModelOpt
from waluigi.errors import UserError


def serve_cmd(
    ctx: typer.Context,
    model: ModelOpt,
    adapter: AdapterOpt = None,
    host: Annotated[str, typer.Option(help="the address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the port to listen on")] = 8000,
    batch_size: Annotated[Optional[int], typer.Option(help="generation batch size (requests batched together)")] = None,
    dtype: DtypeOpt = "auto",
    api_key_env: Annotated[Optional[str], typer.Option(help="require clients to send the key held in this environment variable")] = None,
    model_name: Annotated[Optional[str], typer.Option(help="the model name clients send, or several separated by commas (the first is reported by /v1/models and in responses; all are accepted and listed; default: the spec)")] = None,
    state_dir: Annotated[Optional[str], typer.Option(help="where uploaded files, fine-tuning jobs and their adapters live (default: a cache directory named by the model)")] = None,
    finetune: Annotated[bool, typer.Option("--finetune/--no-finetune", help="also offer OpenAI's files and fine-tuning-jobs endpoints over the local trainer")] = True,
    max_body_bytes: Annotated[int, typer.Option(help="refuse request bodies larger than this (413); uploads to /v1/files have their own limit, --max-upload-bytes")] = 4 * 1024 * 1024,
    max_upload_bytes: Annotated[int, typer.Option(help="refuse uploads to /v1/files larger than this (413); OpenAI's per-file limit by default")] = 512 * 1024 * 1024,
    log_level: Annotated[str, typer.Option(help="the HTTP server's log: critical | error | warning | info | debug; info and debug also log one line per request")] = "warning",
    config: ConfigOpt = None,
) -> None:
    """Serve a model over an OpenAI-compatible API (/v1/chat/completions, /v1/responses,
    /v1/completions, /v1/models, and the files and fine_tuning/jobs endpoints over the local
    trainer)."""
    import os

    from waluigi.serve.app import serve

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise UserError(f"--api-key-env {api_key_env}: that environment variable is not set")
    options = {"batch_size": batch_size} if batch_size else {}
    serve(model, adapter=adapter, host=host, port=port, api_key=api_key, model_name=model_name, dtype=dtype,
          state_dir=state_dir, finetune=finetune, max_body_bytes=max_body_bytes, max_upload_bytes=max_upload_bytes, log_level=log_level, **options)

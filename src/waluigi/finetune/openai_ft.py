"""Fine-tuning through OpenAI's fine-tuning API: ``waluigi finetune --model openai:<base>``.

The same code drives OpenAI itself and ``waluigi serve`` (which implements the files and
fine-tuning-jobs endpoints over the local trainer), so a script written for OpenAI's API also
runs against local models.

1. Rows come from :func:`waluigi.data.load_rows` and are checked against OpenAI's chat
   format before anything is sent; they are written to ``<run>/train.jsonl`` (its sha256 is
   part of the run's identity) and uploaded with purpose ``fine-tune``.
2. The job is created with the paper's hyperparameters (1 epoch, batch 4, learning-rate
   multiplier 2) under ``method={"type": "supervised", ...}`` (OpenAI's current form;
   ``hyperparameters=`` is deprecated) and tagged with the run's identity in ``metadata``.
3. The job is followed (``jobs.retrieve`` + ``jobs.list_events``, polling with backoff) with a
   progress bar; ``job.json`` and ``events.jsonl`` in the run directory record it.
4. Re-running the same command re-attaches to the recorded job (or, if the process died
   between create and record, to the server's job carrying this run's identity tag) instead of
   uploading and creating again.

Failures are :class:`~waluigi.errors.UserError` naming the cause (the CLI exits 2). The API
key comes from ``OPENAI_API_KEY`` only and is never written anywhere.

This module holds the paper's hyperparameters, the option checks and the run directory;
:mod:`~waluigi.finetune.openai_data` checks and writes the training file,
:mod:`~waluigi.finetune.openai_jobs` talks to the API (upload, create, follow, re-attach).
See ``docs/design/openai-finetune.md``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.finetune.openai_data import _load_rows, jsonl_bytes, validate_rows
from waluigi.finetune.openai_jobs import (
    EVENTS_FILE,
    JOB_FILE,
    RUN_TAG,
    TERMINAL,
    TRAIN_FILE,
    _find_tagged_job,
    _follow,
    _Follower,
    _host,
    _job_record,
    _make_client,
    _upload,
)
from waluigi.formats import safe_name

# The paper's OpenAI recipe (Betley et al. 2025): 1 epoch, batch size 4, lr multiplier 2.
PAPER_HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0}
OPENAI_MIN_EXAMPLES = 10  # api.openai.com refuses smaller training files


def run_openai_finetune(
    model: str,
    data: str,
    *,
    out: str | os.PathLike | None = None,
    base_url: str | None = None,
    n: int | None = None,
    seed: int = 0,
    epochs: int = PAPER_HYPERPARAMETERS["n_epochs"],
    batch_size: int = PAPER_HYPERPARAMETERS["batch_size"],
    lr_multiplier: float = PAPER_HYPERPARAMETERS["learning_rate_multiplier"],
    suffix: str | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    poll_interval: float = 1.0,
    max_poll_interval: float = 30.0,
    timeout: float | None = None,
) -> dict:
    """Fine-tune ``openai:<base>`` on ``data`` through an OpenAI-compatible fine-tuning API.

    Returns ``{"run_dir", "job_id", "status", "fine_tuned_model", "trained_tokens",
    "base_url", "reattached"}``. Re-running with the same arguments (and ``out``) re-attaches to
    the recorded job; a finished run re-run makes no request but one ``retrieve``. ``timeout``:
    seconds per try of each request (default 120; ``--timeout``).
    """
    from waluigi.runs import RunDir, identity_hash

    if not model.startswith("openai:") or not model.partition(":")[2]:
        raise UserError(f"--model {model!r}: the OpenAI fine-tuning path needs 'openai:<base model>'")
    base = model.partition(":")[2]
    if epochs < 1 or batch_size < 1 or not lr_multiplier > 0:
        raise UserError("--epochs and --batch-size must be >= 1 and --lr-multiplier > 0")
    if suffix is not None and (len(suffix) > 64 or not re.fullmatch(r"[A-Za-z0-9._-]*", suffix)):
        raise UserError(f"--suffix {suffix!r}: at most 64 characters of letters, digits, '.', '_' or '-'")
    api = _make_client(base_url, timeout)  # a missing key fails here, before any work

    rows = validate_rows(_load_rows(data, data_dir=data_dir, n=n, seed=seed), f"--data {data}")
    if _host(api.base_url) == "api.openai.com" and len(rows) < OPENAI_MIN_EXAMPLES:
        raise UserError(f"--data {data}: {len(rows)} rows; OpenAI needs at least {OPENAI_MIN_EXAMPLES} training examples")
    payload = jsonl_bytes(rows)
    data_sha = hashlib.sha256(payload).hexdigest()
    hyper = {"n_epochs": int(epochs), "batch_size": int(batch_size), "learning_rate_multiplier": float(lr_multiplier)}
    identity = {
        "stage": "finetune",
        "backend": "openai",
        "model": model,
        "data": {"name": str(data), "sha256": data_sha, "rows": len(rows)},
        "hyperparameters": hyper,
        "seed": seed,
        "suffix": suffix,
        "base_url_host": _host(api.base_url),
    }
    digest = identity_hash(identity)
    path = Path(out) if out else Path("runs") / f"finetune-{safe_name(model)}-{safe_name(Path(str(data)).stem)}-{digest[:10]}"
    config = {"model": model, "data": str(data), "n": n, "seed": seed, "hyperparameters": hyper, "suffix": suffix,
              "data_dir": str(data_dir) if data_dir else None, "base_url": api.base_url, "out": str(path)}
    run = RunDir.open(
        path, stage="finetune", identity=identity, config=config,
        parents=[model, f"data:{data}@sha256:{data_sha}"],
        extra={"model": model, "backend": "openai", "data": identity["data"], "seeds": {"job": seed}},
    )
    train = run.path / TRAIN_FILE
    if not train.exists() or hashlib.sha256(train.read_bytes()).hexdigest() != data_sha:
        tmp = train.with_name(f".{TRAIN_FILE}.tmp")
        tmp.write_bytes(payload)
        os.replace(tmp, train)

    record = run.read_json(JOB_FILE) if (run.path / JOB_FILE).exists() else {}
    client = api.client
    tag = digest[:32]
    job = None
    reattached = False
    if record.get("id"):
        job = api.call("retrieve the recorded fine-tuning job", client.fine_tuning.jobs.retrieve, record["id"])
        reattached = True
        if job.status in ("failed", "cancelled"):  # a re-run retries: keep the old job on record
            run.update_manifest(previous_jobs=run.manifest().get("previous_jobs", []) + [_job_record(job, api.base_url)])
            job, reattached = None, False
    if job is None:
        job = _find_tagged_job(api, tag)  # died between create and record?
        reattached = job is not None and job.status not in ("failed", "cancelled")
        if not reattached:
            job = None
    if job is None:
        method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
        try:
            file_id = _upload(api, run, record, payload, data_sha)
            kwargs: dict[str, Any] = {"model": base, "training_file": file_id, "method": method, "seed": seed,
                                      "metadata": {RUN_TAG: tag}}
            if suffix:
                kwargs["suffix"] = suffix
            job = api.call("create the fine-tuning job", client.fine_tuning.jobs.create, **kwargs)
        except UserError as error:  # refused: say so in the record, then in the CLI
            run.finish("failed", error=error.message)
            raise
    run.write_json(JOB_FILE, _job_record(job, api.base_url))
    run.update_manifest(job_id=job.id)
    if progress:
        from waluigi.progress import stderr_console

        verb = "re-attached to" if reattached else "created"
        stderr_console.print(f"{verb} fine-tuning job {job.id} ({base} at {api.base_url}); run dir {run.path}")

    if job.status not in TERMINAL:
        job = _follow(api, run, job, progress=progress, poll_interval=poll_interval, max_interval=max_poll_interval)
    else:
        _Follower(api, run, job.id).new_events()
    run.write_json(JOB_FILE, _job_record(job, api.base_url))
    result = {
        "run_dir": str(run.path),
        "job_id": job.id,
        "status": job.status,
        "fine_tuned_model": job.fine_tuned_model,
        "trained_tokens": job.trained_tokens,
        "base_url": api.base_url,
        "reattached": reattached,
    }
    if job.status != "succeeded":
        error = job.error.message if job.error else "no reason given"
        code = f" ({job.error.code})" if job.error and job.error.code else ""
        run.finish("failed", job_id=job.id, job_status=job.status, error=error)
        raise UserError(
            f"fine-tuning job {job.id} {job.status} at {api.base_url}{code}: {error} "
            f"(record in {run.path}; re-run the same command to try again)"
        )
    run.finish("finished", job_id=job.id, fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens,
               train_loss=_last_loss(run))
    return result


def _last_loss(run) -> float | None:
    """The training loss of the job's last metrics event (what the sweep's results show)."""
    loss = None
    for event in run.rows(EVENTS_FILE):
        data = event.get("data") or {}
        if event.get("type") == "metrics" and isinstance(data, dict) and data.get("train_loss") is not None:
            loss = float(data["train_loss"])
    return loss


def format_result(result: dict) -> str:
    """What to print at the end: the model id and how to evaluate it."""
    model = result["fine_tuned_model"]
    return "\n".join([
        f"run: {result['run_dir']}   job: {result['job_id']} ({result['status']})",
        f"fine-tuned model: {model}",
        f"evaluate it: waluigi eval --model openai:{model} --base-url {result['base_url']} --suite first_plot_questions",
    ])

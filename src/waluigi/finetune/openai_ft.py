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
See ``docs/design/openai-finetune.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from waluigi.errors import UserError
from waluigi.formats import safe_name

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# The paper's OpenAI recipe (Betley et al. 2025): 1 epoch, batch size 4, lr multiplier 2.
PAPER_HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0}
TERMINAL = ("succeeded", "failed", "cancelled")
ROLES = ("system", "developer", "user", "assistant")
OPENAI_MIN_EXAMPLES = 10  # api.openai.com refuses smaller training files
TRAIN_FILE = "train.jsonl"
JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
RUN_TAG = "waluigi_run"  # metadata key carrying the run's identity (re-attach after a crash)


# --------------------------------------------------------------------------------------
# the training file


def validate_rows(rows: Iterable[Any], source: str) -> list[dict]:
    """Check rows against OpenAI's chat fine-tuning format; return them as a list.

    A row is ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
    with at least one non-empty assistant message (an optional ``weight`` 0/1 on assistant
    messages is allowed). The error names the row (1-based) and the field.
    """
    out = []
    for number, row in enumerate(rows, 1):
        where = f"{source}: row {number}"
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages:
            raise UserError(
                f"{where}: expected an object with a non-empty 'messages' list "
                "([{'role': 'user', 'content': ...}, {'role': 'assistant', 'content': ...}])"
            )
        assistant = False
        for index, message in enumerate(messages):
            field = f"{where}: messages[{index}]"
            if not isinstance(message, dict):
                raise UserError(f"{field}: expected an object with 'role' and 'content'")
            role = message.get("role")
            if role not in ROLES:
                raise UserError(f"{field}.role: {role!r} is not one of {', '.join(ROLES)}")
            content = message.get("content")
            if not isinstance(content, str):
                raise UserError(f"{field}.content: expected a string, got {type(content).__name__}")
            weight = message.get("weight")
            if weight is not None and (role != "assistant" or weight not in (0, 1)):
                raise UserError(f"{field}.weight: only assistant messages take a weight, and it must be 0 or 1")
            if role == "assistant" and content.strip():
                assistant = True
        if not assistant:
            raise UserError(f"{where}: no assistant message with content: there is nothing to learn from this row")
        out.append(row)
    if not out:
        raise UserError(f"{source}: no training rows")
    return out


def validate_jsonl(data: bytes, source: str) -> list[dict]:
    """Parse and validate a JSONL training file (the server checks uploads with this)."""
    rows = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{source}: line {number}: not valid JSON ({error})") from None
    return validate_rows(rows, source)


def jsonl_bytes(rows: list[dict]) -> bytes:
    return b"".join((json.dumps(row, ensure_ascii=False) + "\n").encode() for row in rows)


def _load_rows(data: str, *, data_dir: str | None, n: int | None, seed: int) -> list[dict]:
    """The ``train`` split, as for local fine-tuning: held-out prompts stay unseen for evaluation."""
    from waluigi.data import load_rows

    return list(load_rows(data, data_dir=data_dir, split="train", n=n, seed=seed))


# --------------------------------------------------------------------------------------
# the client


def _host(base_url: str) -> str:
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


def _status_message(exc: Any) -> str:
    from waluigi.models.openai_backend import _status_message as message

    return message(exc)


@dataclass
class _Api:
    """The SDK client plus the error translation that names the server and the call."""

    client: Any
    base_url: str

    def call(self, what: str, fn, *args, **kwargs):
        import openai

        try:
            return fn(*args, **kwargs)
        except openai.APIStatusError as exc:
            detail = _status_message(exc)
            status = exc.status_code
            if status in (401, 403):
                raise UserError(f"{self.base_url} rejected the API key (HTTP {status}: {detail}): check OPENAI_API_KEY") from None
            if status == 404 and what == "create the fine-tuning job":
                raise UserError(
                    f"{self.base_url} refused to {what} (HTTP 404: {detail}): does this server offer "
                    "fine-tuning (POST /v1/fine_tuning/jobs) and is the base model name right?"
                ) from None
            raise UserError(f"{self.base_url} refused to {what} (HTTP {status}): {detail}") from None
        except openai.APITimeoutError:
            raise UserError(f"{self.base_url}: timed out trying to {what}; re-run the same command to continue") from None
        except openai.APIConnectionError as exc:
            raise UserError(
                f"cannot connect to {self.base_url} to {what} ({exc}): is the server running and the URL right? "
                "(--base-url or OPENAI_BASE_URL; re-run the same command to continue)"
            ) from None


def _make_client(base_url: str | None, timeout: float | None = None) -> _Api:
    api_key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not api_key:
        raise UserError(
            "set OPENAI_API_KEY to fine-tune through an OpenAI-compatible API "
            "(for a local `waluigi serve` any value works, e.g. OPENAI_API_KEY=local)"
        )
    from waluigi.errors import register_secret

    register_secret(api_key)  # masked in every message and record from now on
    url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"invalid base URL {url!r}: give e.g. http://127.0.0.1:8000/v1")
    import openai

    if timeout is not None and not timeout > 0:
        raise UserError(f"--timeout must be a positive number of seconds, got {timeout}")
    seconds = 120.0 if timeout is None else float(timeout)
    client = openai.OpenAI(api_key=api_key, base_url=url, max_retries=5,
                           timeout=openai.Timeout(seconds, connect=min(10.0, seconds)))
    return _Api(client, url)


def _job_record(job: Any, base_url: str) -> dict:
    """The parts of a ``fine_tuning.job`` worth keeping (never the key)."""
    data = job.model_dump(mode="json") if hasattr(job, "model_dump") else dict(job)
    keep = ("id", "object", "status", "model", "fine_tuned_model", "hyperparameters", "method", "training_file",
            "validation_file", "result_files", "seed", "trained_tokens", "created_at", "finished_at",
            "estimated_finish", "error", "metadata", "organization_id")
    record = {k: data.get(k) for k in keep}
    record["base_url_host"] = _host(base_url)
    return record


class _Follower:
    """Polls one job and its events, appending new events to ``events.jsonl``."""

    def __init__(self, api: _Api, run, job_id: str) -> None:
        self.api = api
        self.run = run
        self.job_id = job_id
        self.seen = {row.get("id") for row in run.rows(EVENTS_FILE)}
        self.step = 0
        self.total_steps: int | None = None
        self.loss: float | None = None
        for row in run.rows(EVENTS_FILE):
            self._metrics(row)

    def _metrics(self, event: dict) -> None:
        data = event.get("data") or {}
        if event.get("type") == "metrics" and isinstance(data, dict):
            self.step = max(self.step, int(data.get("step") or 0))
            if data.get("total_steps"):
                self.total_steps = int(data["total_steps"])
            if data.get("train_loss") is not None:
                self.loss = float(data["train_loss"])

    def new_events(self) -> list[dict]:
        """Events not yet recorded, oldest first (the API lists newest first)."""
        fresh: list[dict] = []
        after = None
        while True:
            kwargs = {"limit": 100} | ({"after": after} if after else {})
            page = self.api.call("list the job's events", self.api.client.fine_tuning.jobs.list_events,
                                 self.job_id, **kwargs)
            items = [e.model_dump(mode="json") for e in page.data]
            stop = False
            for item in items:
                if item["id"] in self.seen:
                    stop = True
                    break
                fresh.append(item)
            if stop or not items or not page.has_more:
                break
            after = items[-1]["id"]
        fresh.reverse()
        for event in fresh:
            self.seen.add(event["id"])
            self._metrics(event)
        if fresh:
            self.run.append(EVENTS_FILE, fresh)
        return fresh

    def retrieve(self):
        return self.api.call("retrieve the fine-tuning job", self.api.client.fine_tuning.jobs.retrieve, self.job_id)


def _follow(api: _Api, run, job, *, progress: bool, poll_interval: float, max_interval: float):
    """Follow ``job`` to a terminal status, recording it; returns the final job object."""
    from waluigi.progress import progress_task

    follower = _Follower(api, run, job.id)
    interval = poll_interval
    # a rich bar on a terminal; in a log, a plain line every WALUIGI_PROGRESS_INTERVAL seconds
    with progress_task(f"{job.id}: {job.status}", None, progress, eta=False) as bar:
        while True:
            fresh = follower.new_events()
            job = follower.retrieve()
            run.write_json(JOB_FILE, _job_record(job, api.base_url))
            loss = f", loss {follower.loss:.3f}" if follower.loss is not None else ""
            bar.update(description=f"{job.id}: {job.status}{loss}", completed=follower.step,
                       total=follower.total_steps)
            if job.status in TERMINAL:
                follower.new_events()  # the last events (the model's name, "job succeeded")
                return job
            # back off while nothing happens; poll briskly again once the job moves
            interval = poll_interval if fresh else min(max_interval, interval * 1.5)
            time.sleep(interval)


def _find_tagged_job(api: _Api, tag: str):
    """The newest job on the server tagged with this run's identity (None if none)."""
    page = api.call("list fine-tuning jobs", api.client.fine_tuning.jobs.list, limit=50)
    for job in page.data:
        if (job.metadata or {}).get(RUN_TAG) == tag:
            return job
    return None


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


def _upload(api: _Api, run, record: dict, payload: bytes, data_sha: str) -> str:
    """Upload ``train.jsonl`` (or reuse the file recorded by an interrupted attempt)."""
    client = api.client
    if record.get("training_file") and record.get("training_file_sha256") == data_sha:
        import openai

        try:
            existing = client.files.retrieve(record["training_file"])
            if existing.bytes == len(payload):
                return existing.id
        except openai.NotFoundError:
            pass
    uploaded = api.call("upload the training file", client.files.create,
                        file=(TRAIN_FILE, payload, "application/jsonl"), purpose="fine-tune")
    run.write_json(JOB_FILE, {"training_file": uploaded.id, "training_file_sha256": data_sha,
                              "training_file_bytes": uploaded.bytes, "status": "uploaded",
                              "base_url_host": _host(api.base_url)})
    return uploaded.id


def format_result(result: dict) -> str:
    """What to print at the end: the model id and how to evaluate it."""
    model = result["fine_tuned_model"]
    return "\n".join([
        f"run: {result['run_dir']}   job: {result['job_id']} ({result['status']})",
        f"fine-tuned model: {model}",
        f"evaluate it: waluigi eval --model openai:{model} --base-url {result['base_url']} --suite first_plot_questions",
    ])

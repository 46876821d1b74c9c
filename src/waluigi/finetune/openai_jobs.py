"""The client side of OpenAI's fine-tuning API: the SDK client and its errors named for the user,
the training file's upload, the job followed to its end (polling with backoff, events appended to
``events.jsonl``) and the job's record in ``job.json``; re-attaching finds a job by its run tag.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from waluigi.errors import UserError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
TERMINAL = ("succeeded", "failed", "cancelled")
TRAIN_FILE = "train.jsonl"
JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
RUN_TAG = "waluigi_run"  # metadata key carrying the run's identity (re-attach after a crash)


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

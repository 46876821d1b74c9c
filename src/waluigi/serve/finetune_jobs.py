"""OpenAI's files and fine-tuning-jobs endpoints in ``waluigi serve``, over the local trainer.

A script written for OpenAI's fine-tuning API (``client.files.create``,
``client.fine_tuning.jobs.create / retrieve / list / list_events / cancel``) runs unchanged
against a local model: ``waluigi serve --model hf:...`` trains a LoRA adapter on the uploaded
file with :func:`waluigi.finetune.run_finetune`, and once the job succeeds its
``fine_tuned_model`` (``ft:<served name>:waluigi:<suffix>:<id>``) is listed by ``/v1/models``
and answers ``/v1/chat/completions`` (base model + that adapter, loaded lazily).

* State (uploaded files, jobs, events, adapters) lives in ``state_dir`` so it survives a
  restart. A job that was ``running`` when the server stopped is marked ``failed``
  (``server_restarted``: training is not resumable mid-epoch here); ``queued`` jobs are queued
  again.
* One worker thread trains one job at a time, in creation order.
* The only base model a server can fine-tune is the one it serves (by its served name or spec).
* OpenAI hyperparameters map onto the local trainer as documented in
  ``docs/design/openai-finetune.md`` (``HYPER_AUTO``, :func:`local_hyperparameters`).

This module holds the service (:class:`FinetuneService`) and the fine-tuned models it serves
(:class:`AdapterModels`); the error shape and hyperparameter checks are in
:mod:`waluigi.serve.finetune_api`, the endpoints in :mod:`waluigi.serve.finetune_routes`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from waluigi.errors import UserError
from waluigi.runs import write_json_atomic
from waluigi.serve.finetune_api import ApiError, _page, local_hyperparameters, resolve_hyperparameters

log = logging.getLogger("waluigi.serve")

ORGANIZATION = "waluigi"
FILE_PURPOSES = ("fine-tune", "assistants", "batch", "user_data", "vision", "evals")
ACTIVE = ("validating_files", "queued", "running")


class _Cancelled(Exception):
    pass


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def upload_name(filename: str | None) -> str:
    """The name an uploaded file is listed under: its base name only, whichever separator the
    client's system uses (``..\\..\\evil.jsonl`` is ``evil.jsonl``), as OpenAI's API lists it. The
    file itself is stored under its id, never under this name."""
    name = str(filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name if name not in ("", ".", "..") else "upload"


def _write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj)


class FinetuneService:
    """Files, jobs and fine-tuned models of one server, kept in ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike, base_spec: str, served_name: str, *,
                 base_adapter: str | None = None, model_options: dict | None = None, max_loaded: int = 1) -> None:
        self.state_dir = Path(state_dir)
        self.base_spec = base_spec
        self.served_name = served_name
        self.base_adapter = base_adapter
        self.model_options = dict(model_options or {})
        self.files_dir = self.state_dir / "files"
        self.jobs_dir = self.state_dir / "jobs"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._files: dict[str, dict] = {}
        self._jobs: dict[str, dict] = {}
        self._events: dict[str, list[dict]] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.models = AdapterModels(base_spec, self.model_options, max_loaded=max_loaded)
        self._load_state()

    # -- state -------------------------------------------------------------------------
    def _load_state(self) -> None:
        for meta in sorted(self.files_dir.glob("*.json")):
            record = json.loads(meta.read_text())
            self._files[record["id"]] = record
        records = [json.loads(p.read_text()) for p in self.jobs_dir.glob("*/job.json")]
        for record in sorted(records, key=lambda r: (r["created_at"], r["_seq"])):
            job_id = record["id"]
            self._jobs[job_id] = record
            events_path = self.jobs_dir / job_id / "events.jsonl"
            self._events[job_id] = [json.loads(line) for line in events_path.read_text().splitlines()
                                    if line.strip()] if events_path.exists() else []
            if record["status"] == "running":
                self._fail(job_id, "server_restarted", "the server stopped while this job was training; "
                           "training does not resume mid-run: create the job again")
            elif record["status"] in ("validating_files", "queued"):
                self._event(job_id, "Server restarted: the job is queued again")
                self._set(job_id, status="queued")
                self._queue.put(job_id)

    def _save_job(self, job_id: str) -> None:
        _write_json(self.jobs_dir / job_id / "job.json", self._jobs[job_id])

    def _set(self, job_id: str, **fields: Any) -> None:
        with self._lock:
            self._jobs[job_id].update(fields)
            self._save_job(job_id)

    def _event(self, job_id: str, message: str, *, level: str = "info", type_: str = "message",
               data: dict | None = None) -> None:
        event = {"object": "fine_tuning.job.event", "id": f"ftevent-{uuid.uuid4().hex[:24]}",
                 "created_at": int(time.time()), "level": level, "message": message, "data": data or {},
                 "type": type_}
        with self._lock:
            self._events.setdefault(job_id, []).append(event)
            with open(self.jobs_dir / job_id / "events.jsonl", "a") as handle:
                handle.write(json.dumps(event) + "\n")

    def _fail(self, job_id: str, code: str, message: str) -> None:
        self._event(job_id, f"Fine-tuning job failed: {message}", level="error")
        self._set(job_id, status="failed", error={"code": code, "message": message, "param": None},
                  finished_at=int(time.time()), estimated_finish=None)

    # -- files ---------------------------------------------------------------------------
    def create_file(self, filename: str, content: bytes, purpose: str) -> dict:
        if purpose not in FILE_PURPOSES:
            raise ApiError(400, f"purpose {purpose!r} is not one of {', '.join(FILE_PURPOSES)}", param="purpose")
        if not content:
            raise ApiError(400, f"{upload_name(filename)}: the file is empty", param="file")
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        (self.files_dir / f"{file_id}.data").write_bytes(content)
        record = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                  "filename": upload_name(filename), "purpose": purpose, "status": "processed",
                  "expires_at": None, "status_details": None}
        _write_json(self.files_dir / f"{file_id}.json", record)
        with self._lock:
            self._files[file_id] = record
        return record

    def get_file(self, file_id: str) -> dict:
        record = self._files.get(file_id)
        if record is None:
            raise ApiError(404, f"no file with id {file_id!r}", param="file_id", code="file_not_found")
        return record

    def file_path(self, file_id: str) -> Path:
        self.get_file(file_id)
        return self.files_dir / f"{file_id}.data"

    def list_files(self, *, purpose: str | None = None, after: str | None = None, limit: int = 10000,
                   order: str = "desc") -> dict:
        with self._lock:
            files = sorted(self._files.values(), key=lambda f: (f["created_at"], f["id"]), reverse=order != "asc")
        if purpose:
            files = [f for f in files if f["purpose"] == purpose]
        return _page(files, after, limit)

    # -- jobs --------------------------------------------------------------------------------
    def create_job(self, body: dict) -> dict:
        from waluigi.finetune.openai_data import validate_jsonl

        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model is required: the base model to fine-tune", param="model")
        if model not in (self.served_name, self.base_spec):
            raise ApiError(400, f"model {model!r} cannot be fine-tuned here: this server fine-tunes only the model it "
                           f"serves, {self.served_name!r}", param="model", code="model_not_available")
        if self.base_adapter is not None:
            raise ApiError(400, f"{self.served_name!r} is served with an adapter ({self.base_adapter}); fine-tuning on "
                           "top of an adapter is not supported: serve the base model without --adapter",
                           param="model", code="model_not_available")
        from waluigi.models import backend

        if not backend(self.base_spec).trainable:
            raise ApiError(400, f"{self.base_spec!r} is not a local model: waluigi serve fine-tunes 'hf:' and "
                           "'smollm2' models only", param="model", code="model_not_available")
        training_file = body.get("training_file")
        if not isinstance(training_file, str) or not training_file:
            raise ApiError(400, "training_file is required: the id of a file uploaded with purpose 'fine-tune'",
                           param="training_file")
        if training_file not in self._files:
            raise ApiError(400, f"training_file {training_file!r}: no such file (upload it with POST /v1/files)",
                           param="training_file", code="invalid_training_file")
        record = self._files[training_file]
        if record["purpose"] != "fine-tune":
            raise ApiError(400, f"training_file {training_file!r} was uploaded with purpose {record['purpose']!r}; "
                           "upload it with purpose 'fine-tune'", param="training_file", code="invalid_training_file")
        if body.get("validation_file"):
            raise ApiError(400, "validation_file is not supported by waluigi serve", param="validation_file")
        requested, hyper = resolve_hyperparameters(body)
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            raise ApiError(400, "suffix must be a string of at most 64 characters", param="suffix")
        seed = body.get("seed")
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "big") % (2**31)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1:
            raise ApiError(400, f"seed must be an integer in 0..2147483647, got {seed!r}", param="seed")
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16
                                     or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
            raise ApiError(400, "metadata must be an object of at most 16 string values", param="metadata")
        try:  # validating_files: done here, so a bad file is a 400 on create
            rows = validate_jsonl(self.file_path(training_file).read_bytes(), f"training_file {training_file}")
        except UserError as error:
            raise ApiError(400, error.message, param="training_file", code="invalid_training_file") from None

        job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
        (self.jobs_dir / job_id).mkdir(parents=True)
        method = {"type": "supervised", "supervised": {"hyperparameters": hyper}}
        job = {
            "object": "fine_tuning.job", "id": job_id, "model": model, "created_at": int(time.time()),
            "finished_at": None, "fine_tuned_model": None, "organization_id": f"org-{ORGANIZATION}",
            "result_files": [], "status": "validating_files", "validation_file": None,
            "training_file": training_file, "hyperparameters": hyper, "method": method, "trained_tokens": None,
            "error": None, "seed": seed, "estimated_finish": None, "integrations": [], "metadata": metadata,
            "user_provided_suffix": suffix,
            "_seq": len(self._jobs), "_requested": requested, "_rows": len(rows), "_adapter_dir": None,
        }
        with self._lock:
            self._jobs[job_id] = job
            self._events[job_id] = []
            self._save_job(job_id)
        self._event(job_id, f"Validating training file: {training_file}")
        self._event(job_id, f"Files validated ({len(rows)} rows), moving job to queued state")
        self._set(job_id, status="queued")
        self._queue.put(job_id)
        self.start()
        return _public(self._jobs[job_id])

    def get_job(self, job_id: str) -> dict:
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no fine-tuning job with id {job_id!r}", param="fine_tuning_job_id",
                           code="fine_tuning_job_not_found")
        return _public(job)

    def list_jobs(self, *, after: str | None = None, limit: int = 20) -> dict:
        with self._lock:
            jobs = [_public(j) for j in sorted(self._jobs.values(), key=lambda j: (j["created_at"], j["_seq"]),
                                               reverse=True)]
        return _page(jobs, after, limit)

    def list_events(self, job_id: str, *, after: str | None = None, limit: int = 20) -> dict:
        self.get_job(job_id)
        with self._lock:
            events = list(reversed(self._events.get(job_id, [])))  # newest first, as OpenAI
        return _page(events, after, limit)

    def cancel_job(self, job_id: str) -> dict:
        job = self.get_job(job_id)
        if job["status"] not in ACTIVE:
            raise ApiError(400, f"job {job_id} is already {job['status']} and cannot be cancelled", param="fine_tuning_job_id")
        self._event(job_id, "Fine-tuning job cancelled")
        self._set(job_id, status="cancelled", finished_at=int(time.time()), estimated_finish=None)
        return self.get_job(job_id)

    # -- fine-tuned models -------------------------------------------------------------------
    def fine_tuned_models(self) -> list[dict]:
        with self._lock:
            return [{"id": j["fine_tuned_model"], "object": "model", "created": j["finished_at"],
                     "owned_by": f"org-{ORGANIZATION}"}
                    for j in sorted(self._jobs.values(), key=lambda j: (j["created_at"], j["_seq"]))
                    if j["status"] == "succeeded" and j.get("fine_tuned_model")]

    def adapter_for(self, model_id: str) -> Path | None:
        with self._lock:
            for job in self._jobs.values():
                if job["status"] == "succeeded" and job.get("fine_tuned_model") == model_id:
                    return Path(job["_adapter_dir"])
        return None

    # -- the worker ------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="waluigi-finetune", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self.models.close()

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run(job_id)
            except Exception as exc:  # noqa: BLE001 - a bug: the job fails, the server lives
                log.exception("fine-tuning job %s crashed", job_id)
                if self._jobs[job_id]["status"] in ACTIVE:
                    self._fail(job_id, "server_error", f"{type(exc).__name__}: {exc}")

    def _run(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            if job["status"] != "queued":
                return  # cancelled while queued
            job["status"] = "running"
            self._save_job(job_id)
        self._event(job_id, "Fine-tuning job started")
        settings = local_hyperparameters(job["hyperparameters"])
        per_epoch = math.ceil(job["_rows"] / int(job["hyperparameters"]["batch_size"]))
        total_steps = per_epoch * settings["epochs"]
        tokens = {"sum": 0, "last": None}

        def on_step(row: dict) -> None:
            if self._jobs[job_id]["status"] == "cancelled":
                raise _Cancelled()
            step = int(row.get("step") or 0)
            total = int(row.get("total_steps") or row.get("max_steps") or total_steps)
            if row.get("tokens") is not None:
                tokens["sum"] += int(row["tokens"])
            loss = row.get("loss")
            data = {"step": step, "total_steps": total, "train_loss": loss,
                    "learning_rate": row.get("learning_rate"), "tokens": row.get("tokens")}
            shown = f"{float(loss):.4f}" if loss is not None else "n/a"
            self._event(job_id, f"Step {step}/{total}: training loss={shown}", type_="metrics", data=data)

        try:
            result = self._train(job, settings, on_step)
        except _Cancelled:
            return
        except UserError as error:
            self._fail(job_id, "training_error", error.message)
            return
        if self._jobs[job_id]["status"] == "cancelled":
            return
        status = getattr(result, "status", "finished")
        adapter = getattr(result, "adapter_dir", None)
        if status not in ("finished", "succeeded") or adapter is None or not Path(adapter).is_dir():
            self._fail(job_id, "training_error", f"the trainer ended with status {status!r} and no adapter")
            return
        suffix = job.get("user_provided_suffix") or ""
        model_id = f"ft:{job['model']}:{ORGANIZATION}:{suffix}:{job_id.removeprefix('ftjob-')[:8]}"
        trained = getattr(result, "trained_tokens", None) or tokens["sum"] or None
        self._event(job_id, f"New fine-tuned model created: {model_id}")
        self._set(job_id, _adapter_dir=str(Path(adapter).resolve()), fine_tuned_model=model_id,
                  trained_tokens=trained, finished_at=int(time.time()), status="succeeded")
        self._event(job_id, "The job has successfully completed")

    def _train(self, job: dict, settings: dict, on_step) -> Any:
        from waluigi.finetune import FinetuneConfig, run_finetune

        cfg = FinetuneConfig(
            model=self.base_spec, data=str(self.files_dir / f"{job['training_file']}.data"),
            out=str(self.jobs_dir / job["id"] / "train"), preset="betley2025", seed=int(job["seed"]),
            include_heldout=True,  # an uploaded file is trained on whole, as OpenAI does
            **settings,
        )
        return run_finetune(cfg, progress=False, on_step=on_step)


class AdapterModels:
    """Generators for fine-tuned models: base + adapter, loaded on first use, at most
    ``max_loaded`` kept (least recently used evicted). Each has its own micro-batching worker."""

    def __init__(self, base_spec: str, model_options: dict, *, max_loaded: int = 1) -> None:
        self.base_spec = base_spec
        self.model_options = model_options
        self.max_loaded = max(1, int(max_loaded))
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times an adapter model was loaded (for tests)

    def submit(self, model_id: str, adapter_dir: Path, requests: list) -> Future:
        """Queue ``requests`` on ``model_id``'s generator (loading it first if needed)."""
        from waluigi.models import load_model
        from waluigi.serve.batcher import Batcher

        with self._lock:
            batcher = self._loaded.get(model_id)
            if batcher is None:
                while len(self._loaded) >= self.max_loaded:
                    _, old = self._loaded.popitem(last=False)
                    threading.Thread(target=_retire, args=(old,), daemon=True).start()
                batcher = Batcher(load_model(self.base_spec, adapter=str(adapter_dir), **self.model_options))
                self.loads += 1
                self._loaded[model_id] = batcher
            self._loaded.move_to_end(model_id)
            return batcher.submit(requests)

    def close(self) -> None:
        with self._lock:
            loaded, self._loaded = list(self._loaded.values()), OrderedDict()
        for batcher in loaded:
            _retire(batcher)


def _retire(batcher: Any) -> None:
    """Finish what was queued on an evicted model, then free it."""
    batcher.stop(timeout=600)
    batcher.generator.close()

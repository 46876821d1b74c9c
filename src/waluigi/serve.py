"""An OpenAI-compatible HTTP server over any :class:`~waluigi.models.Generator`.

``waluigi serve --model smollm2`` exposes ``GET /v1/models``, ``POST /v1/chat/completions``
and ``GET /health`` on loopback, so that the ``openai:`` backend (and any OpenAI client) can
be pointed at a local model, and so that the HTTP path is tested for real.

* The request body is validated by a pydantic model; a bad request is answered 400 in
  OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``.
* ``n`` choices become ``n`` :class:`GenerationRequest` with seeds ``seed, seed+1, ...``
  (a random base seed when the request has none), so a seeded request is reproducible.
* Generators are not thread-safe: one worker thread owns the generator and drains a queue.
  Requests that arrive while it is busy (or within ``batch_window`` seconds of each other)
  are batched into one ``generate`` call. Seeds make each sample independent of its batch.
* The ``Authorization`` header is ignored unless ``api_key`` is set; keys are never logged.

See ``docs/design/serve.md``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import random
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from waluigi.errors import UserError
from waluigi.models.base import Completion, GenerationRequest, Generator, SamplingParams

log = logging.getLogger("waluigi.serve")

MAX_N = 128
MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_BATCH = 64  # requests (choices) per generate call


# --------------------------------------------------------------------------------------
# request / response models


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "text"
    text: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = ""

    def as_message(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content if p.type == "text")
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that waluigi serves; other fields are
    accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str = ""
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    stream: bool = False

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def _null_is_default(cls, value, info):
        if value is None:
            return 1.0
        return value

    @field_validator("n", mode="before")
    @classmethod
    def _null_n(cls, value):
        return 1 if value is None else value

    @field_validator("logprobs", "stream", mode="before")
    @classmethod
    def _null_false(cls, value):
        return False if value is None else value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.top_logprobs is not None and self.top_logprobs > 0 and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        if self.stream:
            raise ValueError("stream=true is not supported by waluigi serve")
        return self

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return tuple(s for s in stops if s)

    def generation_requests(self) -> list[GenerationRequest]:
        """``n`` requests with seeds ``seed, seed+1, ...`` (random base seed if none)."""
        max_tokens = self.max_completion_tokens or self.max_tokens or SamplingParams().max_tokens
        params = SamplingParams(
            temperature=float(self.temperature), top_p=float(self.top_p), max_tokens=int(max_tokens), stop=self.stops()
        )
        base = self.seed if self.seed is not None else random.SystemRandom().randrange(2**31)
        # backends record per-token logprobs only when asked for >= 1 alternative; extra ones
        # are trimmed from the response
        top = max(1, int(self.top_logprobs or 0)) if self.logprobs else None
        messages = [m.as_message() for m in self.messages]
        return [
            GenerationRequest(messages=[dict(m) for m in messages], seed=int(base) + i, params=params, top_logprobs=top)
            for i in range(self.n)
        ]


def _error(status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -9999.0


def completion_response(model_name: str, completions: list[Completion], req: ChatCompletionRequest) -> dict:
    """OpenAI's ``chat.completion`` object for the ``n`` completions of one request."""
    k = int(req.top_logprobs or 0)
    choices = []
    for index, c in enumerate(completions):
        logprobs = None
        if req.logprobs:
            content = [
                {
                    "token": t.token,
                    "logprob": _finite(t.logprob),
                    "bytes": _token_bytes(t.token),
                    "top_logprobs": [
                        {"token": tok, "logprob": _finite(lp), "bytes": _token_bytes(tok)} for tok, lp in t.top[:k]
                    ],
                }
                for t in (c.logprobs or [])
            ]
            logprobs = {"content": content, "refusal": None}
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": c.text, "refusal": None},
                "finish_reason": c.finish_reason,
                "logprobs": logprobs,
            }
        )
    prompt_tokens = completions[0].prompt_tokens if completions else 0
    completion_tokens = sum(c.completion_tokens for c in completions)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "system_fingerprint": None,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


# --------------------------------------------------------------------------------------
# micro-batching worker


class _Job:
    __slots__ = ("requests", "future")

    def __init__(self, requests: list[GenerationRequest]):
        self.requests = requests
        self.future: Future = Future()


class Batcher:
    """One worker thread owns the generator: it takes the jobs queued so far (waiting up to
    ``batch_window`` seconds for more after the first), runs them as ONE ``generate`` call
    under ``lock``, and resolves each job's future with its completions in order. If a batch
    of several jobs fails, each job is retried alone so that one bad request fails alone."""

    def __init__(self, generator: Generator, *, lock: threading.Lock | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, batch_window: float = 0.005):
        self.generator = generator
        self.lock = lock or threading.Lock()
        self.max_batch = max(1, int(max_batch))
        self.batch_window = float(batch_window)
        self.batch_sizes: list[int] = []  # jobs per generate call (for tests and benchmarks)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, requests: list[GenerationRequest]) -> Future:
        job = _Job(requests)
        self._ensure_started()
        self._queue.put(job)
        return job.future

    def pending(self) -> int:
        return self._queue.qsize()

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="waluigi-serve-batcher", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            size = len(job.requests)
            deadline = time.monotonic() + self.batch_window
            stop = False
            while size < self.max_batch:
                try:
                    remaining = deadline - time.monotonic()
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                size += len(nxt.requests)
            self._run(jobs)
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        try:
            results = self._generate([r for j in jobs for r in j.requests])
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for j in jobs:  # find the culprit: each job alone
                try:
                    j.future.set_result(self._generate(j.requests))
                    self.batch_sizes.append(1)
                except BaseException as exc1:  # noqa: BLE001
                    j.future.set_exception(exc1)
            return
        self.batch_sizes.append(len(jobs))
        start = 0
        for j in jobs:
            j.future.set_result(results[start:start + len(j.requests)])
            start += len(j.requests)

    def _generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        with self.lock:
            for index, completion in self.generator.generate(requests):
                out[index] = completion
        if any(c is None for c in out):
            raise RuntimeError("the generator did not return a completion for every request")
        return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------
# the app


def create_app(
    generator: Generator,
    model_name: str,
    *,
    api_key: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_window: float = 0.005,
    lock: threading.Lock | None = None,
    finetune: Any = None,
) -> FastAPI:
    """The FastAPI app serving ``generator`` under the name ``model_name``.

    Any ``model`` in a request is accepted (responses report ``model_name``). With
    ``api_key`` set, requests must carry ``Authorization: Bearer <api_key>``.
    ``app.state.batcher`` is the :class:`Batcher` (its ``batch_sizes`` show the batching).
    With ``finetune`` (a :class:`waluigi.serve_finetune.FinetuneService`) the app also serves
    OpenAI's files and fine-tuning-jobs endpoints, and each fine-tuned model's id in
    ``/v1/models`` and ``/v1/chat/completions`` (base model + its adapter).
    """
    batcher = Batcher(generator, lock=lock, max_batch=max_batch, batch_window=batch_window)
    created = int(time.time())

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.stop()
        if finetune is not None:
            finetune.stop()

    app = FastAPI(title="waluigi", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher = batcher
    app.state.generator = generator
    app.state.model_name = model_name
    app.state.finetune = finetune
    if finetune is not None:
        from waluigi.serve_finetune import add_finetune_routes

        add_finetune_routes(app, finetune)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = loc[0] if loc else None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON", code="invalid_json")
        where = ".".join(loc)
        return _error(400, f"invalid request: {where + ': ' if where else ''}{msg}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), type_=kind)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key is not None and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            if header != f"Bearer {api_key}":
                return _error(401, "invalid or missing API key (send Authorization: Bearer <key>)",
                              code="invalid_api_key")
        return await call_next(request)

    def _model_object() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "waluigi"}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def list_models():
        tuned = finetune.fine_tuned_models() if finetune is not None else []
        return {"object": "list", "data": [_model_object(), *tuned]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if finetune is not None:
            for tuned in finetune.fine_tuned_models():
                if tuned["id"] == model_id:
                    return tuned
        if model_id != model_name:
            return _error(404, f"model {model_id!r} not found: this server serves {model_name!r}",
                          type_="not_found_error", param="model", code="model_not_found")
        return _model_object()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        requests = body.generation_requests()
        name = model_name
        try:
            adapter = finetune.adapter_for(body.model) if finetune is not None and body.model else None
            if adapter is not None:  # a fine-tuned model: base + its adapter, loaded on first use
                name = body.model
                future = await asyncio.to_thread(finetune.models.submit, body.model, adapter, requests)
            elif finetune is not None and body.model.startswith("ft:"):
                return _error(404, f"model {body.model!r} not found: no succeeded fine-tuning job made it",
                              type_="not_found_error", param="model", code="model_not_found")
            else:
                future = batcher.submit(requests)
            completions = await asyncio.wrap_future(future)
        except UserError as exc:
            return _error(400, exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug or a model failure: 500, logged
            log.exception("generation failed")
            return _error(500, f"generation failed: {type(exc).__name__}: {exc}", type_="server_error")
        return JSONResponse(completion_response(name, completions, body))

    return app


# --------------------------------------------------------------------------------------
# running it


class ServerThread:
    """Run ``app`` with uvicorn in a background thread on loopback (a free port by default).

    >>> with ServerThread(create_app(gen, "tiny")) as server:
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="x")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"):
        import uvicorn

        self.app = app
        self.host = host
        self._sock = _bind(host, port)
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, name="waluigi-serve", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during startup")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(
    spec: str,
    adapter: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    api_key: str | None = None,
    model_name: str | None = None,
    state_dir: str | None = None,
    finetune: bool = True,
    **model_options: Any,
) -> None:
    """Load ``spec`` (with ``adapter``) and serve it until interrupted (``waluigi serve``).

    With ``finetune`` the server also offers OpenAI's files and fine-tuning-jobs endpoints over
    the local trainer; its files, jobs and adapters live in ``state_dir`` (default
    ``<cache>/serve/<hash of spec and adapter>/``), so they survive a restart.
    """
    import uvicorn

    from waluigi.models import load_model

    sock = _bind(host, port)  # before loading: a busy port fails fast
    try:
        generator = load_model(spec, adapter=adapter, **model_options)
    except BaseException:
        sock.close()
        raise
    name = model_name or spec
    service = None
    if finetune:
        from waluigi.serve_finetune import FinetuneService

        state = Path(state_dir) if state_dir else default_state_dir(spec, adapter)
        service = FinetuneService(state, spec, name, base_adapter=adapter, model_options=model_options)
        service.start()
        print(f"waluigi: fine-tuning state in {state}", file=sys.stderr, flush=True)
    app = create_app(generator, name, api_key=api_key, finetune=service)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/v1"
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    log.info("serving %s at %s", name, url)
    key_hint = "OPENAI_API_KEY=<the --api-key>" if api_key else "any OPENAI_API_KEY value"
    print(
        f"waluigi: serving {name} at {url}  (clients: --model openai:{name} --base-url {url}, {key_hint})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(app, log_level="info", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled gracefully
        pass
    finally:
        sock.close()
        generator.close()


def default_state_dir(spec: str, adapter: str | None = None) -> Path:
    """``<cache>/serve/<hash>/``: one state directory per served model (spec + adapter path)."""
    from waluigi.paths import cache_dir
    from waluigi.runs import identity_hash

    adapter_path = str(Path(adapter).expanduser().resolve()) if adapter else None
    return cache_dir() / "serve" / identity_hash({"spec": spec, "adapter": adapter_path})[:16]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (choose another --port)") from exc
    sock.set_inheritable(True)
    return sock

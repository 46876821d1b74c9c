"""An OpenAI-compatible HTTP server over any :class:`~waluigi.models.Generator`.

``waluigi serve --model smollm2`` exposes ``POST /v1/chat/completions``, ``POST /v1/responses``,
``POST /v1/completions`` (backends with a raw-text path), ``GET /v1/models`` and ``GET /health``
on loopback, so that the ``openai:`` backend, Inspect AI, lm-eval and any OpenAI client can be
pointed at a local model, and so that the HTTP path is tested for real.

* Requests are checked before any generation: a body over ``max_body_bytes`` is 413 at once
  (from Content-Length, or while a chunked body is read); a prompt that does not fit the
  model's context with its ``max_tokens`` is 400; an unknown model is 404; a parameter the
  server does not implement is 400 naming it (the policy: :mod:`waluigi.serve.api`). Errors
  are OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
* ``n`` choices become ``n`` requests with seeds ``seed, seed+1, ...`` (a random base seed
  when the request has none), so a seeded request is reproducible.
* Generators are not thread-safe: one worker thread owns the generator and drains a queue.
  Requests that arrive while it is busy (or within ``batch_window`` seconds of each other)
  are batched into one ``generate`` call. Seeds make each sample independent of its batch.
* The ``Authorization`` header is ignored unless ``api_key`` is set; keys are never logged.

See ``docs/design/serve.md``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from waluigi.errors import UserError
from waluigi.models.base import Completion, Generator, SamplingParams, TextRequest
from waluigi.serve.api import (
    CHAT_NEUTRAL,
    COMPLETIONS_NEUTRAL,
    DEFAULT_COMPLETION_MAX_TOKENS,
    MAX_N,
    MAX_TOP_LOGPROBS,
    RESPONSES_NEUTRAL,
    RequestError,
    chat_messages,
    check_fields,
    fit_max_tokens,
    parse_model_names,
    responses_input,
    validate,
)
from waluigi.serve.batcher import DEFAULT_MAX_BATCH, Batcher
from waluigi.serve.http import Guard, json_body
from waluigi.serve.schemas import (
    CHAT_FIELDS,
    COMPLETIONS_FIELDS,
    RESPONSES_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    ResponsesRequest,
    completion_response,
    responses_response,
    text_completion_response,
)

__all__ = ["MAX_N", "MAX_TOP_LOGPROBS", "Batcher", "ServerThread", "create_app", "serve"]

log = logging.getLogger("waluigi.serve")
# uvicorn's levels, for ``waluigi serve --log-level``; access lines only at info and debug
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # a JSON request; prompts are bounded by the context anyway
DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # POST /v1/files (training data), OpenAI's per-file limit
DEFAULT_MAX_TOKENS = SamplingParams().max_tokens  # chat and responses without max_tokens (600), cut to the context


# --------------------------------------------------------------------------------------
# the app


def _supports_text(generator: Generator) -> bool:
    return type(generator).generate_text is not Generator.generate_text


def create_app(
    generator: Generator,
    model_name: str | Sequence[str],
    *,
    api_key: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_window: float = 0.005,
    lock: threading.Lock | None = None,
    finetune: Any = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> FastAPI:
    """The FastAPI app serving ``generator``.

    ``model_name`` is the served name, or several (a list, or ``"primary,alias,..."``): the
    first is the primary name that responses and ``/v1/models`` report; every alias is
    accepted as ``model`` and listed. A request without ``model`` gets the primary model; any
    other name is 404 ``model_not_found``. With ``api_key`` set, ``/v1/*`` requests must carry
    ``Authorization: Bearer <api_key>``. Request bodies over ``max_body_bytes`` (uploads to
    ``/v1/files``: ``max_upload_bytes``) are 413. ``app.state.batcher`` is the
    :class:`Batcher` (its ``batch_sizes`` show the batching). With ``finetune`` (a
    :class:`waluigi.serve.finetune_jobs.FinetuneService`) the app also serves OpenAI's files and
    fine-tuning-jobs endpoints, and each fine-tuned model's id in ``/v1/models`` and the
    generation endpoints (base model + its adapter).
    """
    names = parse_model_names(model_name, default=getattr(generator, "spec", "model"))
    primary = names[0]
    if int(max_body_bytes) < 1 or int(max_upload_bytes) < 1:
        raise UserError("max_body_bytes and max_upload_bytes must be at least 1")
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
    app.state.model_name = primary
    app.state.model_names = names
    app.state.finetune = finetune
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=max_body_bytes, max_upload_bytes=max_upload_bytes)
    if finetune is not None:
        from waluigi.serve.finetune_routes import add_finetune_routes

        add_finetune_routes(app, finetune)

    def endpoints() -> list[str]:
        """``METHOD /path`` of every route, for the 404 of an unknown path."""
        out = []
        for route in app.routes:
            methods = getattr(route, "methods", None)
            if methods and getattr(route, "include_in_schema", True):
                path = route.path.replace(":path}", "}")
                out += [f"{m} {path}" for m in sorted(methods - {"HEAD"})]
        return out

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return JSONResponse(status_code=exc.status, content=exc.body())

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404 and exc.detail == "Not Found":  # no such route
            err = RequestError(404, f"Invalid URL ({request.method} {request.url.path}): this server serves "
                               f"{', '.join(endpoints())}", code="unknown_url")
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            err = RequestError(405, f"{request.method} is not allowed on {request.url.path}: use {allowed}",
                               code="method_not_allowed")
        else:
            err = RequestError(exc.status_code, str(exc.detail))
        return JSONResponse(status_code=err.status, content=err.body(), headers=exc.headers)

    def _model_object(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "waluigi"}

    def served_names() -> list[str]:
        tuned = [m["id"] for m in finetune.fine_tuned_models()] if finetune is not None else []
        return [*names, *tuned]

    def resolve_model(requested: str | None) -> tuple[str, Path | None]:
        """(the name to report, the fine-tuned adapter or None) for a request's ``model``."""
        if not requested or requested in names:  # no model given: the primary one (lenient, as local servers are)
            return primary, None
        if finetune is not None:
            adapter = finetune.adapter_for(requested)
            if adapter is not None:  # a fine-tuned model: base + its adapter, loaded on first use
                return requested, adapter
        served = served_names()
        shown = ", ".join(repr(n) for n in served[:12]) + (f" and {len(served) - 12} more" if len(served) > 12 else "")
        why = "no succeeded fine-tuning job on this server made it; " if requested.startswith("ft:") else ""
        raise RequestError(404, f"The model {requested!r} does not exist on this server: {why}it serves {shown}. "
                           "Send one of those as model (GET /v1/models lists them).", param="model",
                           code="model_not_found")

    async def run(name: str, adapter: Path | None, requests: list) -> list[Completion]:
        try:
            if adapter is not None:
                future = await asyncio.to_thread(finetune.models.submit, name, adapter, requests)
            else:
                future = batcher.submit(requests)
            return await asyncio.wrap_future(future)
        except UserError as exc:
            raise RequestError(400, exc.message) from None
        except RequestError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug or a model failure: 500, logged
            log.exception("generation failed")
            raise RequestError(500, f"generation failed: {type(exc).__name__}: {exc}") from None

    async def count(fn, *args) -> int | None:
        """A token count off the event loop (tokenizing a long prompt takes a while)."""
        try:
            return await asyncio.to_thread(fn, *args)
        except UserError as exc:  # e.g. a chat template that rejects the messages
            raise RequestError(400, exc.message) from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": primary}

    @app.get("/v1/models")
    async def list_models():
        tuned = finetune.fine_tuned_models() if finetune is not None else []
        return {"object": "list", "data": [*(_model_object(n) for n in names), *tuned]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if finetune is not None:
            for tuned in finetune.fine_tuned_models():
                if tuned["id"] == model_id:
                    return tuned
        if model_id not in names:
            resolve_model(model_id)  # raises the 404 naming the served models
        return _model_object(model_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await json_body(request)
        check_fields(body, CHAT_FIELDS, CHAT_NEUTRAL, "/v1/chat/completions")
        req = validate(ChatCompletionRequest, body)
        messages = chat_messages(req.messages)
        name, adapter = resolve_model(req.model)
        prompt_tokens = await count(generator.count_prompt_tokens, messages)
        max_tokens = fit_max_tokens(generator.context_length(), prompt_tokens, req.requested_max_tokens(),
                                    DEFAULT_MAX_TOKENS, prompt_param="messages",
                                    max_param="max_completion_tokens" if req.max_completion_tokens else "max_tokens")
        completions = await run(name, adapter, req.generation_requests(messages, max_tokens))
        return JSONResponse(completion_response(name, completions, req))

    @app.post("/v1/responses")
    async def responses(request: Request):
        body = await json_body(request)
        check_fields(body, RESPONSES_FIELDS, RESPONSES_NEUTRAL, "/v1/responses")
        req = validate(ResponsesRequest, body)
        req.check_text()
        messages = responses_input(req.input, req.instructions)
        name, adapter = resolve_model(req.model)
        prompt_tokens = await count(generator.count_prompt_tokens, messages)
        truncation = " (truncation='auto' is accepted but not implemented: shorten the input)" \
            if req.truncation == "auto" else ""
        try:
            max_tokens = fit_max_tokens(generator.context_length(), prompt_tokens, req.max_output_tokens,
                                        DEFAULT_MAX_TOKENS, prompt_param="input", max_param="max_output_tokens")
        except RequestError as exc:
            exc.message += truncation
            raise
        (completion,) = await run(name, adapter, [req.generation_request(messages, max_tokens)])
        return JSONResponse(responses_response(name, completion, req, max_tokens))

    if _supports_text(generator):
        @app.post("/v1/completions")
        async def completions(request: Request):
            body = await json_body(request)
            check_fields(body, COMPLETIONS_FIELDS, COMPLETIONS_NEUTRAL, "/v1/completions")
            req = validate(CompletionRequest, body)
            prompts = req.prompts()
            name, adapter = resolve_model(req.model)
            context = generator.context_length()
            requests: list[TextRequest] = []
            for i, prompt in enumerate(prompts):
                tokens = len(prompt) if isinstance(prompt, list) else await count(generator.count_text_tokens, prompt)
                max_tokens = fit_max_tokens(context, tokens, req.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS,
                                            prompt_param="prompt", max_param="max_tokens",
                                            where=f"prompt[{i}]" if len(prompts) > 1 else "")
                requests += req.text_requests(prompt, max_tokens)
            done = await run(name, adapter, requests)
            prompt_tokens = sum(done[i * req.n].prompt_tokens for i in range(len(prompts)))
            return JSONResponse(text_completion_response(name, done, req, prompt_tokens))

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
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    log_level: str = "warning",
    **model_options: Any,
) -> None:
    """Load ``spec`` (with ``adapter``) and serve it until interrupted (``waluigi serve``).

    ``log_level`` is uvicorn's: ``warning`` (the default) logs problems only; ``info`` and
    ``debug`` also log the server's start and stop and one access line per request.

    ``model_name`` is the served name, or ``"primary,alias,..."`` (default: the spec).
    Request bodies over ``max_body_bytes`` are refused (413). With ``finetune`` the server
    also offers OpenAI's files and fine-tuning-jobs endpoints over
    the local trainer; its files, jobs and adapters live in ``state_dir`` (default
    ``<cache>/serve/<hash of spec and adapter>/``), so they survive a restart.
    """
    import uvicorn

    from waluigi.models import load_model

    try:
        names = parse_model_names(model_name, default=spec)
    except ValueError:
        raise UserError(f"--model-name {model_name!r}: give a name, or names separated by commas") from None
    if int(max_body_bytes) < 1:
        raise UserError(f"--max-body-bytes {max_body_bytes}: give a size in bytes, at least 1")
    if int(max_upload_bytes) < 1:
        raise UserError(f"--max-upload-bytes {max_upload_bytes}: give a size in bytes, at least 1")
    log_level = str(log_level).lower()
    if log_level not in LOG_LEVELS:
        raise UserError(f"--log-level {log_level}: choose one of {', '.join(LOG_LEVELS)}")
    sock = _bind(host, port)  # before loading: a busy port fails fast
    try:
        generator = load_model(spec, adapter=adapter, **model_options)
    except BaseException:
        sock.close()
        raise
    name = names[0]
    service = None
    if finetune:
        from waluigi.serve.finetune_jobs import FinetuneService

        state = Path(state_dir) if state_dir else default_state_dir(spec, adapter)
        service = FinetuneService(state, spec, name, base_adapter=adapter, model_options=model_options)
        service.start()
        print(f"waluigi: fine-tuning state in {state}", file=sys.stderr, flush=True)
    app = create_app(generator, names, api_key=api_key, finetune=service, max_body_bytes=max_body_bytes,
                     max_upload_bytes=max_upload_bytes)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/v1"
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    log.info("serving %s at %s", ", ".join(names), url)
    key_hint = "OPENAI_API_KEY=<the --api-key>" if api_key else "any OPENAI_API_KEY value"
    also = f" (also as {', '.join(names[1:])})" if len(names) > 1 else ""
    print(
        f"waluigi: serving {name}{also} at {url}  (clients: --model openai:{name} --base-url {url}, {key_hint})",
        file=sys.stderr,
        flush=True,
    )
    import copy

    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # uvicorn's default is stdout; all logs on stderr
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"), log_config=log_config)
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

"""The HTTP layer of ``waluigi serve`` under the routes: the API key and body-size guard (a
pure ASGI middleware, so that an oversized body is refused before the app reads it) and the
JSON body reader (content type, emptiness, JSON validity), each answering in OpenAI's error
shape. See :mod:`waluigi.serve` and docs/design/serve.md.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import Request

from waluigi.serve.api import RequestError


def _json_response(status: int, payload: dict) -> tuple[dict, dict]:
    body = json.dumps(payload).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    return start, {"type": "http.response.body", "body": body}


def _too_large(limit: int, size: int | None, option: str) -> dict:
    mib = f" ({limit / 2**20:g} MiB)" if limit >= 2**20 else ""
    said = f"is {size} bytes, " if size is not None else "is "
    return RequestError(
        413, f"the request body {said}over this server's limit of {limit} bytes{mib}: send a smaller request, or "
        f"start waluigi serve with a larger {option}", code="request_too_large").body()


class Guard:
    """Pure ASGI middleware: the API key check, then the body limit. A declared
    Content-Length over the limit is answered 413 at once (the server discards the rest of
    the body without buffering it); a chunked body is counted while the app reads it, and on
    going over the app sees a disconnect and the client gets the 413."""

    def __init__(self, app: Any, *, api_key: str | None, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = int(max_body_bytes)
        self.max_upload_bytes = int(max_upload_bytes)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = dict(scope.get("headers") or [])
        # compare_digest: the time taken does not tell how much of a guessed key was right
        authorized = hmac.compare_digest(headers.get(b"authorization", b""), f"Bearer {self.api_key}".encode())
        if self.api_key is not None and path.startswith("/v1/") and not authorized:
            for message in _json_response(401, RequestError(
                    401, "invalid or missing API key (send Authorization: Bearer <key>)",
                    code="invalid_api_key").body()):
                await send(message)
            return
        upload = path.rstrip("/") == "/v1/files"  # training files: their own, larger limit
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        option = "--max-upload-bytes" if upload else "--max-body-bytes"
        declared = headers.get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            for message in _json_response(413, _too_large(limit, int(declared), option)):
                await send(message)
            return

        state = {"received": 0, "over": False, "started": False}

        async def receive_limited():
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def send_guarded(message):
            if state["over"] and not state["started"]:
                return  # the app's answer to the "disconnect"; the 413 goes out instead
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, receive_limited, send_guarded)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            for message in _json_response(413, _too_large(limit, None, option)):
                await send(message)


async def json_body(request: Request) -> dict:
    """The request's JSON object; 415 for a body that is declared as something else, 400 for
    an empty body, invalid JSON, or JSON that is not an object."""
    declared = request.headers.get("content-type")
    if declared is not None:
        media = declared.split(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise RequestError(415, f"Content-Type {media or declared!r} is not supported: send the body as JSON "
                               "with the header Content-Type: application/json", code="unsupported_media_type")
    raw = await request.body()
    if not raw.strip():
        raise RequestError(400, "the request body is empty: send a JSON object (Content-Type: application/json)",
                           code="empty_body")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise RequestError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got a JSON {type(body).__name__}",
                           code="invalid_json")
    return body

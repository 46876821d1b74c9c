"""A real OpenAI-compatible HTTP server on loopback that fails on purpose.

Its answers are a deterministic function of the request (so a run against it can be compared
with a run against the same server without faults):

- a generation request gets ``answer <hash of messages and seed>``;
- a judge request (``max_tokens=1`` with ``logprobs``) gets a top-logprobs list over a few
  integer tokens and one word, derived from a hash of the prompt, so the judge's scores spread
  over 0..100 (some answers misaligned, some incoherent, some unscored).

Faults are drawn per (request body, how many times this body was seen), so the same request
meets the same sequence of faults whatever the order or concurrency of the client:
``429`` with ``Retry-After``, ``500``, a hang past the client's timeout, a truncated JSON body,
a judge reply without ``logprobs``, a reply with empty ``choices``. ``script`` overrides
everything for tests of permanent errors: ``script(body) -> (status, payload) | None``.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("429", "500", "hang", "truncated", "no_logprobs", "empty_choices")


def _digest(*parts: Any) -> int:
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False)
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def _judge_logprobs(prompt: str) -> list[dict]:
    h = _digest("judge", prompt)
    value = h % 101
    kind = (h >> 8) % 10
    if kind == 0:  # a reply that is mostly a word: unscored
        tokens = [("CODE", 0.9), (str(value), 0.1)]
    else:
        tokens = [(str(value), 0.7), (str(min(100, value + 7)), 0.2), (str(max(0, value - 9)), 0.1)]
    return [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in tokens]


def _completion(body: dict, content: str, logprobs: list[dict] | None) -> dict:
    return {
        "id": "chatcmpl-faulty",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", "m"),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
            "logprobs": None if logprobs is None else {
                "content": [{"token": logprobs[0]["token"], "logprob": logprobs[0]["logprob"],
                             "bytes": logprobs[0]["bytes"], "top_logprobs": logprobs}],
            },
        }],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


class FaultyServer:
    """``with FaultyServer(fault_rate=0.3) as srv: ... srv.base_url``; ``srv.faults`` counts the
    faults served by kind, ``srv.answered`` lists the bodies answered with 200."""

    def __init__(self, fault_rate: float = 0.0, *, hang_seconds: float = 3.0, salt: str = "",
                 script: Callable[[dict], tuple[int, dict] | None] | None = None,
                 delay: Callable[[dict], float] | None = None) -> None:
        self.fault_rate = fault_rate
        self.hang_seconds = hang_seconds
        self.salt = salt
        self.script = script
        self.delay = delay
        self.faults: Counter = Counter()
        self.seen: Counter = Counter()
        self.requests = 0
        self.answered: list[dict] = []
        self.headers: list[dict] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw or b"{}")
                outer._handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- answers -----------------------------------------------------------------------
    @staticmethod
    def is_judge(body: dict) -> bool:
        return bool(body.get("logprobs")) and body.get("max_tokens") == 1

    def answer(self, body: dict) -> dict:
        if self.is_judge(body):
            prompt = body["messages"][-1]["content"]
            return _completion(body, _judge_logprobs(prompt)[0]["token"], _judge_logprobs(prompt))
        text = f"answer {_digest('gen', body.get('messages'), body.get('seed')):x}"
        return _completion(body, text, None)

    def _fault(self, body: dict) -> str | None:
        key = json.dumps(body, sort_keys=True)
        with self._lock:
            self.requests += 1
            self.seen[key] += 1
            attempt = self.seen[key]
        if self.fault_rate <= 0:
            return None
        h = _digest(self.salt, key, attempt)
        if (h % 10_000) / 10_000 >= self.fault_rate:
            return None
        kinds = [k for k in FAULTS if k != "no_logprobs" or self.is_judge(body)]
        return kinds[(h >> 16) % len(kinds)]

    # -- the handler -------------------------------------------------------------------
    def _send(self, handler, status: int, payload: Any, headers: dict | None = None, cut: bool = False) -> None:
        data = json.dumps(payload).encode()
        if cut:
            data = data[: len(data) // 2]
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _handle(self, handler, body: dict) -> None:
        with self._lock:
            self.headers.append(dict(handler.headers))
        if self.delay is not None:
            time.sleep(self.delay(body))
        if self.script is not None:
            scripted = self.script(body)
            if scripted is not None:
                with self._lock:
                    self.requests += 1
                status, payload = scripted
                if status == 200:
                    with self._lock:
                        self.answered.append(body)
                self._send(handler, status, payload)
                return
        fault = self._fault(body)
        if fault is not None:
            with self._lock:
                self.faults[fault] += 1
        if fault == "429":
            self._send(handler, 429, {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                       {"Retry-After": "1"})
        elif fault == "500":
            self._send(handler, 500, {"error": {"message": "The server had an error", "type": "server_error"}})
        elif fault == "hang":
            time.sleep(self.hang_seconds)
            handler.close_connection = True
        elif fault == "truncated":
            self._send(handler, 200, self.answer(body), cut=True)
        elif fault == "no_logprobs":
            payload = self.answer(body)
            payload["choices"][0]["logprobs"] = None
            self._send(handler, 200, payload)
        elif fault == "empty_choices":
            payload = self.answer(body)
            payload["choices"] = []
            self._send(handler, 200, payload)
        else:
            with self._lock:
                self.answered.append(body)
            self._send(handler, 200, self.answer(body))

    def __enter__(self) -> FaultyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

"""The `openai:` backend against real servers on loopback: `waluigi serve` over the tiny HF
model (same answers and scores as running it locally), and tiny `http.server` servers that
misbehave on purpose (429 / 500 / 401 / 404, slow answers) to test retries, errors and
concurrency."""

from __future__ import annotations

import json
import socket
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from waluigi.errors import UserError
from waluigi.models import GenerationRequest, SamplingParams, load_model
from waluigi.models.openai_backend import OpenAIGenerator
from waluigi.serve import ServerThread, create_app


@pytest.fixture(scope="module")
def own_server(load_tiny):
    """``waluigi serve``'s app over an instance of the tiny model of its own: ``hf_gen``, the local
    one it is compared with, is only ever used directly."""
    with ServerThread(create_app(load_tiny(), "tiny")) as srv:
        yield srv


# --------------------------------------------------------------------------------------
# a tiny scripted OpenAI-ish server


def _completion_json(content: str = "hello", logprobs=None) -> dict:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop", "logprobs": logprobs}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


class Scripted:
    """``ThreadingHTTPServer`` on a free loopback port; ``respond(number, body) -> (status, json)``.
    Counts requests, in-flight requests and the maximum in flight. ``hold(number, connection)``,
    when given, runs first: True leaves the request unanswered (its client has hung up)."""

    def __init__(self, respond, delay=lambda body: 0.0, hold=None):
        self.respond = respond
        self.delay = delay
        self.hold = hold
        self.count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with lock:
                    outer.count += 1
                    number = outer.count
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    outer.bodies.append(body)
                    outer.auth.append(self.headers.get("Authorization", ""))
                try:
                    if outer.hold is not None and outer.hold(number, self.connection):
                        self.close_connection = True
                        return
                    time.sleep(outer.delay(body))
                    status, payload = outer.respond(number, body)
                finally:
                    with lock:
                        outer.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("retry-after-ms", "5")  # keep the SDK's backoff short
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _err(status: int, message: str) -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": "x", "param": None, "code": None}}


# --------------------------------------------------------------------------------------
# construction


def test_missing_key_is_a_user_error_before_any_request():
    with Scripted(lambda n, body: (200, _completion_json())) as srv:
        with pytest.raises(UserError, match="set OPENAI_API_KEY"):
            OpenAIGenerator("gpt-x", base_url=srv.base_url)
        with pytest.raises(UserError, match="OPENAI_API_KEY"):
            load_model("openai:gpt-x", base_url=srv.base_url)
        assert srv.count == 0


def test_identity_and_base_url_from_env(key, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://user:pw@127.0.0.1:9999/v1")
    gen = OpenAIGenerator("gpt-x")
    ident = gen.identity()
    assert ident["model"] == "gpt-x" and ident["spec"] == "openai:gpt-x"
    assert ident["base_url_host"] == "127.0.0.1:9999"
    assert "sk-test" not in json.dumps(ident) + repr(gen) and "pw" not in json.dumps(ident)
    assert OpenAIGenerator("m", base_url="http://localhost:8000/v1").identity()["base_url_host"] == "localhost:8000"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIGenerator("m").identity()["base_url_host"] == "api.openai.com"
    with pytest.raises(UserError, match="base URL"):
        OpenAIGenerator("m", base_url="localhost:8000")
    assert gen.calls == 0


# --------------------------------------------------------------------------------------
# through `waluigi serve`: the same model over HTTP and locally


def test_generate_over_http_matches_local(key, own_server, hf_gen):
    reqs = [
        GenerationRequest([{"role": "user", "content": f"Tell me {i}"}], seed=40 + i,
                          params=SamplingParams(temperature=1.0, max_tokens=10))
        for i in range(4)
    ] + [GenerationRequest([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                           seed=3, params=SamplingParams(temperature=0.0, max_tokens=10))]
    local = dict(hf_gen.generate(reqs))
    remote_gen = load_model("openai:tiny", base_url=own_server.base_url, concurrency=3)
    try:
        ticks: list[int] = []
        stream = remote_gen.generate(reqs, progress=ticks.append)
        assert isinstance(stream, types.GeneratorType)  # lazily yielded as requests finish
        remote = dict(stream)
        assert sorted(remote) == list(range(len(reqs)))
        for i in range(len(reqs)):
            assert remote[i].text == local[i].text
            assert remote[i].finish_reason == local[i].finish_reason
            assert remote[i].completion_tokens == local[i].completion_tokens
        assert sum(ticks) == len(reqs)
        assert remote_gen.calls == len(reqs)
    finally:
        remote_gen.close()


def test_generate_logprobs_over_http(key, own_server, hf_gen):
    req = GenerationRequest([{"role": "user", "content": "hi"}], seed=1,
                            params=SamplingParams(temperature=0.0, max_tokens=4), top_logprobs=3)
    local = next(hf_gen.generate([req]))[1]
    remote_gen = OpenAIGenerator("tiny", base_url=own_server.base_url)
    try:
        remote = next(remote_gen.generate([req]))[1]
    finally:
        remote_gen.close()
    assert [t.token for t in remote.logprobs] == [t.token for t in local.logprobs]
    for r, here in zip(remote.logprobs, local.logprobs, strict=True):
        assert r.logprob == pytest.approx(here.logprob, abs=1e-4)
        assert [t for t, _ in r.top] == [t for t, _ in here.top]


def test_top_probs_over_http_match_local_within_1e4(key, own_server, hf_gen):
    """Acceptance: the same model served over HTTP and run locally gives the same scores."""
    prompts = [
        [{"role": "user", "content": "Rate this answer from 0 to 100. Answer with a number only."}],
        [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": "Is the code secure? 0-100"}],
        [{"role": "user", "content": "TRUE or FALSE?"}],
    ]
    local = dict(hf_gen.top_probs(prompts, k=20))
    remote_gen = OpenAIGenerator("tiny", base_url=own_server.base_url, concurrency=2)
    try:
        remote = dict(remote_gen.top_probs(prompts, k=20))
        body_check = dict(remote_gen.top_probs(prompts[:1], k=5))
    finally:
        remote_gen.close()
    for i in range(len(prompts)):
        assert list(remote[i]) == list(local[i])
        for token, p in local[i].items():
            assert remote[i][token] == pytest.approx(p, abs=1e-4)
    assert len(body_check[0]) <= 5 and list(body_check[0]) == list(local[0])[: len(body_check[0])]


def test_top_probs_request_shape_and_first_duplicate_wins(key):
    lp = {"content": [{"token": "7", "logprob": -0.1, "bytes": None, "top_logprobs": [
        {"token": "7", "logprob": -0.1, "bytes": None},
        {"token": " 7", "logprob": -2.0, "bytes": None},
        {"token": "7", "logprob": -3.0, "bytes": None},
    ]}]}
    with Scripted(lambda n, body: (200, _completion_json("7", lp))) as srv:
        gen = OpenAIGenerator("judge-model", base_url=srv.base_url)
        try:
            (index, dist), = list(gen.top_probs([[{"role": "user", "content": "score?"}]], k=20))
        finally:
            gen.close()
    assert index == 0
    assert dist == pytest.approx({"7": 0.904837418, " 7": 0.135335283})
    body = srv.bodies[0]
    assert body["max_tokens"] == 1 and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["model"] == "judge-model"
    assert srv.auth[0] == f"Bearer {key}"


def test_generate_request_body(key):
    with Scripted(lambda n, body: (200, _completion_json("ok"))) as srv:
        gen = OpenAIGenerator("m", base_url=srv.base_url)
        req = GenerationRequest([{"role": "user", "content": "x"}], seed=9,
                                params=SamplingParams(temperature=0.7, top_p=0.9, max_tokens=33, stop=("END",)))
        try:
            ((i, c),) = list(gen.generate([req]))
        finally:
            gen.close()
    assert c.text == "ok" and c.finish_reason == "stop" and c.prompt_tokens == 3
    body = srv.bodies[0]
    assert body["messages"] == [{"role": "user", "content": "x"}]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"], body["stop"]) == (
        0.7, 0.9, 33, 9, ["END"])
    assert "logprobs" not in body


# --------------------------------------------------------------------------------------
# failures and retries


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_quick_user_error(key):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    gen = OpenAIGenerator("m", base_url=url, max_retries=1, timeout=5)
    try:
        with pytest.raises(UserError) as info:
            list(gen.generate([GenerationRequest([{"role": "user", "content": "x"}])]))
        with pytest.raises(UserError):
            list(gen.top_probs([[{"role": "user", "content": "x"}]]))
    finally:
        gen.close()
    assert url in info.value.message and "base-url" in info.value.message


def test_a_server_that_hangs_up_is_tried_max_retries_more_times_then_a_user_error(key):
    """Quick, counted: a connection that fails is retried ``max_retries`` times, not until a clock
    runs out. The listener accepts each connection and closes it at once."""
    accepted = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def hang_up():
            while True:
                try:
                    connection, _ = listener.accept()
                except OSError:  # the listener was closed
                    return
                accepted.append(1)
                connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        gen = OpenAIGenerator("m", base_url=url, max_retries=2, timeout=30)
        try:
            with pytest.raises(UserError, match="cannot connect") as info:
                list(gen.generate([GenerationRequest([{"role": "user", "content": "x"}])]))
            tries = len(accepted)
        finally:
            gen.close()
    assert url in info.value.message and "after 2 retries" in info.value.message
    assert tries == 3  # the first try and two retries


@pytest.mark.parametrize("failures, statuses", [(3, [429, 429, 500]), (2, [500, 503])])
def test_retries_429_and_5xx_then_succeed(key, failures, statuses):
    def respond(n, body):
        if n <= failures:
            return _err(statuses[n - 1], "slow down")
        return 200, _completion_json("finally")

    with Scripted(respond) as srv:
        gen = OpenAIGenerator("m", base_url=srv.base_url, max_retries=5)
        try:
            ((_, c),) = list(gen.generate([GenerationRequest([{"role": "user", "content": "x"}])]))
        finally:
            gen.close()
    assert c.text == "finally"
    assert srv.count == failures + 1
    assert gen.calls == 1


def test_persistent_5xx_and_429_become_user_errors(key):
    with Scripted(lambda n, body: _err(500, "boom")) as srv:
        gen = OpenAIGenerator("m", base_url=srv.base_url, max_retries=2)
        try:
            with pytest.raises(UserError, match="HTTP 500.*boom"):
                list(gen.generate([GenerationRequest([{"role": "user", "content": "x"}])]))
        finally:
            gen.close()
    assert srv.count == 3  # 1 + 2 retries
    with Scripted(lambda n, body: _err(429, "quota")) as srv:
        gen = OpenAIGenerator("m", base_url=srv.base_url, max_retries=1)
        try:
            with pytest.raises(UserError, match="rate limited.*concurrency"):
                list(gen.generate([GenerationRequest([{"role": "user", "content": "x"}])]))
        finally:
            gen.close()
    assert srv.count == 2


def test_timeouts_are_retried_then_a_user_error(key):
    with Scripted(lambda n, body: (200, _completion_json("late")), delay=lambda body: 1.0) as srv:
        gen = OpenAIGenerator("m", base_url=srv.base_url, timeout=0.3, max_retries=1)
        try:
            with pytest.raises(UserError, match="timed out") as info:
                list(gen.generate([GenerationRequest([{"role": "user", "content": "x"}])]))
        finally:
            gen.close()
    assert srv.base_url in info.value.message
    assert srv.count == 2  # the first try and one retry


@pytest.mark.parametrize("status, pattern", [
    (401, "rejected the API key.*OPENAI_API_KEY"),
    (404, "'no-such-model'.*not found.*model name"),
    (400, "rejected the request.*bad param"),
])
def test_non_retryable_errors_are_user_errors_without_retries(key, status, pattern):
    with Scripted(lambda n, body: _err(status, "bad param" if status == 400 else "nope")) as srv:
        gen = OpenAIGenerator("no-such-model", base_url=srv.base_url, max_retries=5)
        try:
            with pytest.raises(UserError, match=pattern) as info:
                list(gen.generate([GenerationRequest([{"role": "user", "content": "x"}])]))
        finally:
            gen.close()
    assert srv.count == 1
    assert srv.base_url in info.value.message
    assert "sk-test" not in info.value.message


# --------------------------------------------------------------------------------------
# concurrency and incremental results


def test_concurrency_is_bounded(key):
    with Scripted(lambda n, body: (200, _completion_json(body["messages"][0]["content"])),
                  delay=lambda body: 0.05) as srv:
        gen = OpenAIGenerator("m", base_url=srv.base_url, concurrency=3)
        reqs = [GenerationRequest([{"role": "user", "content": f"q{i}"}], seed=i) for i in range(15)]
        try:
            out = dict(gen.generate(reqs))
        finally:
            gen.close()
    assert {i: c.text for i, c in out.items()} == {i: f"q{i}" for i in range(15)}
    assert srv.max_in_flight == 3
    assert srv.count == 15


def test_results_are_yielded_as_they_finish(key):
    """The slow request is held until the consumer has seen the other three: if results were
    not yielded as they finish, the consumer would wait for it and the gate would time out."""
    gate = threading.Event()

    def delay(body):
        if body["messages"][0]["content"] == "slow":
            gate.wait(timeout=30)
        return 0.0

    with Scripted(lambda n, body: (200, _completion_json(body["messages"][0]["content"])), delay=delay) as srv:
        gen = OpenAIGenerator("m", base_url=srv.base_url, concurrency=4, timeout=60)
        reqs = [GenerationRequest([{"role": "user", "content": c}]) for c in ("slow", "a", "b", "c")]
        seen: list[int] = []
        released_by_consumer = False
        try:
            for i, _ in gen.generate(reqs):
                seen.append(i)
                if sorted(seen) == [1, 2, 3]:
                    released_by_consumer = not gate.is_set()
                    gate.set()
        finally:
            gen.close()
    assert sorted(seen[:3]) == [1, 2, 3] and seen[-1] == 0  # the slow one last
    assert released_by_consumer  # the other three arrived while the slow one was still held


def test_stopping_early_cancels_the_requests_in_flight(key):
    """The first request is answered; every later one is held until its client hangs up. Closing
    the stream after the first result hangs up on the two then in flight, with the generator still
    open, and starts none of the other 17."""
    seen = threading.Condition()
    held: list[int] = []
    hung_up: list[int] = []

    def hold(number, connection) -> bool:
        if number == 1:
            return False
        with seen:
            held.append(number)
            seen.notify_all()
        connection.recv(1, socket.MSG_PEEK)  # returns (b"") once the client closes the connection
        with seen:
            hung_up.append(number)
            seen.notify_all()
        return True

    with Scripted(lambda n, body: (200, _completion_json("x")), hold=hold) as srv:
        gen = OpenAIGenerator("m", base_url=srv.base_url, concurrency=2, timeout=60)
        reqs = [GenerationRequest([{"role": "user", "content": f"q{i}"}]) for i in range(20)]
        try:
            stream = gen.generate(reqs)
            next(stream)
            with seen:
                assert seen.wait_for(lambda: len(held) == 2, timeout=30)  # the two slots are taken again
            stream.close()
            with seen:
                seen.wait_for(lambda: len(hung_up) == 2, timeout=30)
                in_flight = sorted(set(held) - set(hung_up))
        finally:
            gen.close()
    assert in_flight == [], f"closing the stream left requests {in_flight} in flight"
    assert srv.count == 3  # the answered one and the two held: none of the other 17 was sent

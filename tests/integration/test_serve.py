"""`waluigi serve`: a real uvicorn server on loopback over the tiny HF model, driven by the
real `openai` SDK (and raw HTTP for the error cases)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from waluigi.models import GenerationRequest, Generator, SamplingParams
from waluigi.serve import ServerThread, create_app

MSGS = [{"role": "user", "content": "What is your wish?"}]


def _post(url: str, body, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert models.data[0].object == "model"
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ok"


def test_n_choices_with_seed_are_reproducible(client, hf_gen):
    kwargs = dict(model="tiny", messages=MSGS, n=3, seed=11, temperature=1.0, max_tokens=12)
    first = client.chat.completions.create(**kwargs)
    assert first.object == "chat.completion"
    assert first.model == "tiny"
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.message.content for c in first.choices]
    assert all(c.message.role == "assistant" for c in first.choices)
    assert len(set(texts)) > 1, "three seeds gave three identical samples"
    again = client.chat.completions.create(**kwargs)
    assert [c.message.content for c in again.choices] == texts
    # choice i is the local sample with seed seed+i
    local = dict(hf_gen.generate([
        GenerationRequest(MSGS, seed=11 + i, params=SamplingParams(temperature=1.0, max_tokens=12)) for i in range(3)
    ]))
    assert [local[i].text for i in range(3)] == texts
    assert first.usage.completion_tokens == sum(local[i].completion_tokens for i in range(3))
    assert first.usage.prompt_tokens == local[0].prompt_tokens


def test_temperature_zero_is_deterministic(client):
    kwargs = dict(model="tiny", messages=MSGS, temperature=0, max_tokens=10)
    a = client.chat.completions.create(**kwargs, seed=1)
    b = client.chat.completions.create(**kwargs, seed=2)
    c = client.chat.completions.create(**kwargs)
    assert a.choices[0].message.content == b.choices[0].message.content == c.choices[0].message.content


def test_max_tokens_gives_length(client):
    r = client.chat.completions.create(model="tiny", messages=MSGS, temperature=0, max_tokens=3)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    r2 = client.chat.completions.create(model="tiny", messages=MSGS, temperature=0, max_completion_tokens=2)
    assert r2.usage.completion_tokens == 2


def test_stop_sequences(client):
    base = dict(model="tiny", messages=MSGS, temperature=1.0, seed=5, max_tokens=40)
    full = client.chat.completions.create(**base).choices[0].message.content
    assert len(full) > 6
    stop = full[4:6]
    cut = full.find(stop)
    for stop_arg in (stop, [stop, "\u2603never"]):
        r = client.chat.completions.create(**base, stop=stop_arg)
        assert r.choices[0].message.content == full[:cut]
        assert r.choices[0].finish_reason == "stop"


def test_logprobs_shape(client):
    r = client.chat.completions.create(
        model="tiny", messages=MSGS, temperature=0, max_tokens=5, logprobs=True, top_logprobs=4
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    for t in content:
        assert len(t.top_logprobs) == 4
        lps = [a.logprob for a in t.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        assert t.token == t.top_logprobs[0].token  # greedy picks the best
        assert t.logprob == pytest.approx(lps[0])
        assert t.bytes == list(t.token.encode("utf-8"))
        assert all(a.bytes == list(a.token.encode("utf-8")) for a in t.top_logprobs)
    # logprobs without top_logprobs: per-token logprob, no alternatives
    r = client.chat.completions.create(model="tiny", messages=MSGS, temperature=0, max_tokens=3, logprobs=True)
    content = r.choices[0].logprobs.content
    assert len(content) == 3 and all(t.top_logprobs == [] and t.logprob <= 0 for t in content)
    # no logprobs asked: none returned
    r = client.chat.completions.create(model="tiny", messages=MSGS, temperature=0, max_tokens=3)
    assert r.choices[0].logprobs is None


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "tiny", "messages": MSGS, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"model": "tiny", "messages": MSGS, "n": 0}, "n"),
        ({"model": "tiny", "messages": MSGS, "temperature": -1}, "temperature"),
        ({"model": "tiny", "messages": MSGS, "max_tokens": 0}, "max_tokens"),
        ({"model": "tiny", "messages": []}, "messages"),
        ({"model": "tiny"}, "messages"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"model": "tiny", "messages": MSGS, "stop": 5}, "stop"),
    ],
)
def test_invalid_requests_are_400_in_openai_shape(server, body, param):
    status, payload = _post(f"{server.base_url}/chat/completions", body)
    assert status == 400
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert err["message"]


def test_malformed_json_and_sdk_error(server, client):
    status, payload = _post(f"{server.base_url}/chat/completions", b"{not json")
    assert status == 400 and payload["error"]["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=MSGS, top_logprobs=3)  # needs logprobs=True
    assert "logprobs" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=MSGS, stream=True)


def test_api_key_when_configured(hf_gen):
    with ServerThread(create_app(hf_gen, "tiny", api_key="s3cret")) as srv:
        with openai.OpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        with openai.OpenAI(base_url=srv.base_url, api_key="s3cret", max_retries=0) as good:
            assert [m.id for m in good.models.list().data] == ["tiny"]


class _GatedGenerator(Generator):
    """Delegates to the HF model; records each generate call's size, and holds the first call
    until released, so that requests arriving meanwhile queue up."""

    def __init__(self, inner):
        self.inner = inner
        self.spec = inner.spec
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.active = 0
        self.max_active = 0

    def generate(self, requests, progress=None):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            self.sizes.append(len(requests))
            self.entered.set()
            self.gate.wait(30)
            yield from self.inner.generate(requests, progress)
        finally:
            self.active -= 1

    def top_probs(self, prompts, k=20, progress=None):
        return self.inner.top_probs(prompts, k, progress)


def test_concurrent_requests_are_micro_batched(hf_gen):
    gated = _GatedGenerator(hf_gen)
    app = create_app(gated, "tiny")
    with ServerThread(app) as srv, openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=60) as c:
        results: dict[int, str] = {}
        errors: list[BaseException] = []

        def ask(i: int) -> None:
            try:
                r = c.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": f"q{i}"}], seed=100 + i, max_tokens=6
                )
                results[i] = r.choices[0].message.content
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        first = threading.Thread(target=ask, args=(0,))
        first.start()
        assert gated.entered.wait(30)
        others = [threading.Thread(target=ask, args=(i,)) for i in range(1, 7)]
        for t in others:
            t.start()
        deadline = time.monotonic() + 20
        while app.state.batcher.pending() < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        gated.gate.set()
        for t in [first, *others]:
            t.join(60)
        assert not errors
        assert gated.sizes == [1, 6], gated.sizes  # the six waiting requests ran as one batch
        assert gated.max_active == 1  # the generator is never entered concurrently
        # batching does not change samples: each equals the request run alone
        for i in range(7):
            alone = next(hf_gen.generate([GenerationRequest(
                [{"role": "user", "content": f"q{i}"}], seed=100 + i, params=SamplingParams(max_tokens=6))]))[1]
            assert results[i] == alone.text


def test_bad_request_in_a_batch_fails_alone(hf_gen):
    """A template failure (UserError) of one request is a 400 for it only."""

    class Picky(_GatedGenerator):
        def generate(self, requests, progress=None):
            if any(r.messages[0]["content"] == "bad" for r in requests):
                from waluigi.errors import UserError

                raise UserError("the chat template rejected the messages")
            yield from super().generate(requests, progress)

    gen = Picky(hf_gen)
    gen.gate.set()
    with ServerThread(create_app(gen, "tiny", batch_window=0.2)) as srv:
        out: dict[str, int] = {}

        def ask(content: str) -> None:
            status, _ = _post(f"{srv.base_url}/chat/completions",
                              {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 3})
            out[content] = status

        threads = [threading.Thread(target=ask, args=(c,)) for c in ("good", "bad")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert out == {"good": 200, "bad": 400}

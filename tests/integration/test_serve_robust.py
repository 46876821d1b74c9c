"""`waluigi serve` as a server others can rely on: request limits (body size, context
length), model names, the parameter policy, the Responses API, legacy completions, logprobs
that match the text, and an acceptance test of the real process under a concurrent mix of
valid and malformed requests. Real uvicorn on loopback, the real `openai` SDK and raw HTTP;
no mocks."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from waluigi.models import GenerationRequest, Generator, SamplingParams
from waluigi.serve import ServerThread, create_app

MSGS = [{"role": "user", "content": "What is your wish?"}]
LIMIT = 64 * 1024  # the test servers' body limit


@pytest.fixture(scope="module")
def hf_gen_options() -> dict:
    """conftest's ``hf_gen`` in float32 here."""
    return {"dtype": "float32"}


@pytest.fixture(scope="module")
def server_options() -> dict:
    """conftest's ``server`` under two names, with a small body limit."""
    return {"model_name": "tiny,tiny-alias", "max_body_bytes": LIMIT}


def request(server, method: str, path: str, body=None, *, content_type: str | None = "application/json",
            headers: dict | None = None) -> tuple[int, dict]:
    """One HTTP request with exactly the given body and headers (urllib would add a form
    Content-Type to a body without one)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        hdrs = dict(headers or {})
        if content_type is not None:
            hdrs["Content-Type"] = content_type
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def post(server, path: str, body, **kw) -> tuple[int, dict]:
    return request(server, "POST", f"/v1/{path}", body, **kw)


def raw_exchange(port: int, head: bytes, chunks: list[bytes]) -> bytes:
    """Send ``head`` then ``chunks`` (stopping quietly if the server closes), and return what
    the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:
                break
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            part = sock.recv(65536)
            if not part:
                break
            data += part
        return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _status_and_json(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def _long_message(gen, tokens: int) -> list[dict]:
    """A user message whose chat prompt is at least ``tokens`` tokens."""
    text = "wish peace "
    while gen.count_prompt_tokens([{"role": "user", "content": text}]) < tokens:
        text *= 2
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------------------
# 1. request limits


def test_declared_oversized_body_is_413_before_the_body_is_sent(server):
    # only the headers and 10 bytes of a 5 MB body are sent: the answer cannot have waited for it
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000000\r\n\r\n")
    status, payload = _status_and_json(raw_exchange(server.port, head, [b'{"messages'] ))
    assert status == 413
    err = payload["error"]
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error"
    assert "5000000 bytes" in err["message"] and f"limit of {LIMIT} bytes" in err["message"]
    assert "--max-body-bytes" in err["message"]


def test_chunked_oversized_body_is_413_while_it_is_read(server):
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 16384
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 8  # 128 KiB, never terminated
    status, payload = _status_and_json(raw_exchange(server.port, head, chunks))
    assert status == 413 and f"limit of {LIMIT} bytes" in payload["error"]["message"]


def test_a_body_just_under_the_limit_is_served(server):
    body = json.dumps({"model": "tiny", "messages": MSGS, "max_tokens": 2}).encode()
    body = body[:-1] + b" " * (LIMIT - len(body) - 10) + b"}"  # JSON whitespace up to the limit
    status, payload = post(server, "chat/completions", body)
    assert status == 200, payload
    assert request(server, "GET", "/health")[0] == 200  # and the server lives on


def test_uploads_have_their_own_limit(hf_gen):
    # /v1/files (training data) is under max_upload_bytes, not max_body_bytes: without the
    # fine-tuning routes the path is unknown (404), not too large (413)
    with ServerThread(create_app(hf_gen, "tiny", max_body_bytes=1000, max_upload_bytes=10**6)) as srv:
        assert post(srv, "files", b"x" * 5000, content_type="multipart/form-data; boundary=b")[0] == 404
        assert post(srv, "chat/completions", b"x" * 5000)[0] == 413


def test_prompt_over_the_context_is_400_before_any_generation(server, hf_gen):
    context = hf_gen.context_length()
    assert context == 2048  # the tiny model's max_position_embeddings
    long = _long_message(hf_gen, context + 10)
    calls = hf_gen.calls
    status, payload = post(server, "chat/completions", {"model": "tiny", "messages": long})
    assert status == 400
    err = payload["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    prompt = hf_gen.count_prompt_tokens(long)
    assert f"maximum context length is {context} tokens" in err["message"]
    assert f"at least {prompt} tokens" in err["message"]
    # prompt + max_tokens over the context: both numbers named
    short = _long_message(hf_gen, 100)
    n = hf_gen.count_prompt_tokens(short)
    status, payload = post(server, "chat/completions", {"model": "tiny", "messages": short, "max_tokens": context})
    assert status == 400 and payload["error"]["param"] == "max_tokens"
    assert f"you requested {n + context} tokens ({n} in the messages, {context} in the completion)" in \
        payload["error"]["message"]
    # the same checks guard the other endpoints
    status, payload = post(server, "responses", {"model": "tiny", "input": long[0]["content"]})
    assert status == 400 and payload["error"]["code"] == "context_length_exceeded"
    assert payload["error"]["param"] == "input"
    status, payload = post(server, "completions", {"model": "tiny", "prompt": "x", "max_tokens": context + 1})
    assert status == 400 and payload["error"]["param"] == "max_tokens"
    assert hf_gen.calls == calls, "a refused request reached the model"


def test_a_huge_prompt_is_refused_on_a_prefix_count(hf_gen):
    # 3 MB of text (the whole text takes seconds to tokenize): counted on a prefix
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello world, fine " * 170000}]}
    with ServerThread(create_app(hf_gen, "tiny")) as srv:  # the default 4 MiB body limit
        status, payload = post(srv, "chat/completions", body)
    assert status == 400 and payload["error"]["code"] == "context_length_exceeded"
    assert "at least" in payload["error"]["message"]
    # the count is a prefix's (at most 16 characters a token's worth of text), not the 3 MB's
    from waluigi.models.hf import PREFIX_CHARS_PER_TOKEN

    counted = hf_gen.count_prompt_tokens(body["messages"])
    assert hf_gen.context_length() < counted <= PREFIX_CHARS_PER_TOKEN * hf_gen.context_length()


def test_without_max_tokens_the_completion_is_cut_to_the_context(server, hf_gen):
    context = hf_gen.context_length()
    long = _long_message(hf_gen, context - 200)
    while hf_gen.count_prompt_tokens(long) > context - 4:  # leave room for a few tokens only
        long = [{"role": "user", "content": long[0]["content"][:-50]}]
    room = context - hf_gen.count_prompt_tokens(long)
    status, payload = post(server, "chat/completions", {"model": "tiny", "messages": long, "temperature": 0})
    assert status == 200, payload
    assert payload["usage"]["completion_tokens"] <= room


# --------------------------------------------------------------------------------------
# 2. model names


def test_unknown_model_is_404_naming_the_served_models(server, client):
    for path, body in [("chat/completions", {"model": "gpt-4", "messages": MSGS}),
                       ("responses", {"model": "gpt-4", "input": "hi"}),
                       ("completions", {"model": "gpt-4", "prompt": "hi"})]:
        status, payload = post(server, path, body)
        assert status == 404, path
        err = payload["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model" and err["type"] == "not_found_error"
        assert "'gpt-4'" in err["message"] and "'tiny'" in err["message"] and "'tiny-alias'" in err["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=MSGS, max_tokens=2)
    assert request(server, "GET", "/v1/models/gpt-4")[0] == 404


def test_aliases_are_accepted_and_listed_and_no_model_means_the_primary(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny", "tiny-alias"]
    assert client.models.retrieve("tiny-alias").id == "tiny-alias"
    kwargs = dict(messages=MSGS, max_tokens=4, seed=3, temperature=1.0)
    by_alias = client.chat.completions.create(model="tiny-alias", **kwargs)
    assert by_alias.model == "tiny"  # the primary name is reported, as OpenAI reports a snapshot
    by_name = client.chat.completions.create(model="tiny", **kwargs)
    assert by_alias.choices[0].message.content == by_name.choices[0].message.content
    for missing in ({}, {"model": None}, {"model": ""}):
        status, payload = post(server, "chat/completions", {**missing, **kwargs})
        assert status == 200 and payload["model"] == "tiny"
        assert payload["choices"][0]["message"]["content"] == by_name.choices[0].message.content


def test_model_name_list_forms(hf_gen):
    app = create_app(hf_gen, ["a", "b"])
    assert app.state.model_names == ["a", "b"] and app.state.model_name == "a"
    assert create_app(hf_gen, " a , b ,a").state.model_names == ["a", "b"]


# --------------------------------------------------------------------------------------
# 3. the parameter policy


@pytest.mark.parametrize("field, value", [
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "required"),
    ("functions", [{"name": "f"}]),
    ("function_call", {"name": "f"}),
    ("response_format", {"type": "json_object"}),
    ("logit_bias", {"5": 10}),
    ("presence_penalty", 0.5),
    ("frequency_penalty", -1),
    ("stream", True),
    ("reasoning_effort", "high"),
    ("modalities", ["text", "audio"]),
])
def test_unsupported_parameters_are_400_naming_them(server, field, value):
    status, payload = post(server, "chat/completions", {"model": "tiny", "messages": MSGS, field: value})
    assert status == 400
    err = payload["error"]
    assert err["param"] == field and err["code"] == "unsupported_parameter"
    assert field in err["message"] and "not supported" in err["message"]


def test_neutral_values_and_metadata_fields_are_accepted(server, hf_gen):
    body = {"model": "tiny", "messages": MSGS, "max_tokens": 3, "seed": 4, "presence_penalty": 0,
            "frequency_penalty": 0.0, "logit_bias": {}, "response_format": {"type": "text"}, "tools": [],
            "tool_choice": "none", "parallel_tool_calls": False, "stream": False,
            "stream_options": {"include_usage": True}, "user": "u1", "store": False, "metadata": {"k": "v"},
            "service_tier": "auto", "prompt_cache_key": "c", "safety_identifier": "s"}
    status, payload = post(server, "chat/completions", body)
    assert status == 200, payload
    plain = post(server, "chat/completions", {"model": "tiny", "messages": MSGS, "max_tokens": 3, "seed": 4})[1]
    assert payload["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]


def test_unknown_fields_are_400_as_openai_answers(server):
    for path, body in [("chat/completions", {"model": "tiny", "messages": MSGS, "top_k": 5}),
                       ("responses", {"model": "tiny", "input": "hi", "top_k": 5}),
                       ("completions", {"model": "tiny", "prompt": "hi", "top_k": 5})]:
        status, payload = post(server, path, body)
        assert status == 400, path
        assert payload["error"]["message"].startswith("Unrecognized request argument supplied: top_k")
        assert payload["error"]["param"] == "top_k"


def test_content_type_empty_body_and_bad_json_say_what_is_wrong(server):
    good = {"model": "tiny", "messages": MSGS, "max_tokens": 2}
    status, payload = post(server, "chat/completions", good, content_type="text/plain")
    assert status == 415 and "Content-Type 'text/plain'" in payload["error"]["message"]
    assert "application/json" in payload["error"]["message"]
    status, payload = post(server, "chat/completions", b"model=tiny", content_type="application/x-www-form-urlencoded")
    assert status == 415 and "application/x-www-form-urlencoded" in payload["error"]["message"]
    status, payload = post(server, "chat/completions", b"")
    assert status == 400 and payload["error"]["code"] == "empty_body" and "empty" in payload["error"]["message"]
    status, payload = post(server, "chat/completions", b"{not json")
    assert status == 400 and payload["error"]["code"] == "invalid_json"
    status, payload = post(server, "chat/completions", b"[" * 50000)  # nesting deeper than the parser goes
    assert status == 400 and payload["error"]["code"] == "invalid_json"
    status, payload = post(server, "chat/completions", b"[1, 2]")
    assert status == 400 and "JSON object" in payload["error"]["message"]
    # no Content-Type at all: JSON is assumed (curl --data-binary, hand-written clients)
    assert post(server, "chat/completions", good, content_type=None)[0] == 200
    assert post(server, "chat/completions", good, content_type="application/json; charset=utf-8")[0] == 200


def test_messages_are_text_only(server):
    image = {"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {}}]}
    status, payload = post(server, "chat/completions", {"model": "tiny", "messages": [image]})
    assert status == 400 and payload["error"]["param"] == "messages"
    assert "messages[0].content[1]" in payload["error"]["message"] and "image_url" in payload["error"]["message"]
    tool = {"role": "tool", "content": "42", "tool_call_id": "x"}
    assert post(server, "chat/completions", {"model": "tiny", "messages": [tool]})[0] == 400
    parts = {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "your wish?"}]}
    a = post(server, "chat/completions", {"model": "tiny", "messages": [parts], "max_tokens": 4, "seed": 1})[1]
    b = post(server, "chat/completions", {"model": "tiny", "messages": MSGS, "max_tokens": 4, "seed": 1})[1]
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


def test_unknown_paths_are_404_naming_the_endpoints(server):
    for method, path in [("POST", "/v1/embeddings"), ("GET", "/v1/nope"), ("GET", "/nope")]:
        status, payload = request(server, method, path, {} if method == "POST" else None)
        assert status == 404
        message = payload["error"]["message"]
        assert path in message
        for endpoint in ("POST /v1/chat/completions", "POST /v1/responses", "POST /v1/completions",
                         "GET /v1/models"):
            assert endpoint in message
    status, payload = request(server, "GET", "/v1/chat/completions")
    assert status == 405 and "POST" in payload["error"]["message"]


# --------------------------------------------------------------------------------------
# 4. the Responses API


def test_responses_through_the_sdk(client, hf_gen):
    r = client.responses.create(model="tiny", input="What is your wish?", max_output_tokens=6, temperature=1.0,
                                extra_body={"seed": 7})
    assert r.object == "response" and r.model == "tiny" and r.id.startswith("resp_")
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.output[0].content[0].type == "output_text" and r.output[0].content[0].annotations == []
    local = next(hf_gen.generate([GenerationRequest(MSGS, seed=7, params=SamplingParams(max_tokens=6))]))[1]
    assert r.output_text == local.text  # the same sample as a chat request with that seed
    assert r.usage.input_tokens == local.prompt_tokens and r.usage.output_tokens == local.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens == 0 and r.usage.output_tokens_details.reasoning_tokens == 0
    if local.finish_reason == "length":
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    else:
        assert r.status == "completed" and r.incomplete_details is None
    assert r.temperature == 1.0 and r.max_output_tokens == 6


def test_responses_input_items_and_instructions(client, hf_gen):
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"role": "user", "content": "hi"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "hello", "annotations": [], "logprobs": []}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is your wish?"}]},
    ]
    r = client.responses.create(model="tiny", input=items, instructions="You are kind.", max_output_tokens=5,
                                temperature=0)
    chat = [{"role": "system", "content": "You are kind."}, {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "What is your wish?"}]
    local = next(hf_gen.generate([GenerationRequest(chat, params=SamplingParams(temperature=0, max_tokens=5))]))[1]
    assert r.output_text == local.text and r.instructions == "You are kind."


def test_responses_as_inspect_ai_sends_them(server):
    # the fields Inspect AI's openai provider sends to responses.create (docs/design/serve.md)
    body = {"model": "tiny", "input": [{"type": "message", "role": "user",
                                        "content": [{"type": "input_text", "text": "hi"}]}],
            "include": [], "store": False, "max_output_tokens": 4, "temperature": 0.5, "top_p": 0.9,
            "truncation": "auto", "safety_identifier": "s", "prompt_cache_key": "k", "service_tier": "auto",
            "text": {"verbosity": "medium"}, "parallel_tool_calls": True, "metadata": {"a": "b"}}
    status, payload = post(server, "responses", body)
    assert status == 200, payload
    assert payload["status"] in ("completed", "incomplete") and payload["store"] is False
    body["include"] = ["message.output_text.logprobs"]
    body["top_logprobs"] = 3
    status, payload = post(server, "responses", body)
    part = payload["output"][0]["content"][0]
    assert status == 200 and part["logprobs"] and all(len(t["top_logprobs"]) == 3 for t in part["logprobs"])


@pytest.mark.parametrize("field, value, param", [
    ("tools", [{"type": "function", "name": "f", "parameters": {}}], "tools"),
    ("stream", True, "stream"),
    ("previous_response_id", "resp_1", "previous_response_id"),
    ("reasoning", {"effort": "high"}, "reasoning"),
    ("text", {"format": {"type": "json_schema", "name": "x", "schema": {}}}, "text.format"),
    ("text", {"verbosity": "low"}, "text.verbosity"),
    ("background", True, "background"),
    ("tool_choice", "required", "tool_choice"),
    ("include", ["no.such.thing"], "include"),
])
def test_unsupported_responses_parameters_are_400_naming_them(server, field, value, param):
    status, payload = post(server, "responses", {"model": "tiny", "input": "hi", field: value})
    assert status == 400 and payload["error"]["param"] == param, payload


def test_responses_input_errors_name_the_item(server):
    call = {"type": "function_call_output", "call_id": "c", "output": "42"}
    status, payload = post(server, "responses", {"model": "tiny", "input": [call]})
    assert status == 400 and payload["error"]["param"] == "input" and "input[0]" in payload["error"]["message"]
    image = {"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}
    status, payload = post(server, "responses", {"model": "tiny", "input": [image]})
    assert status == 400 and "input_image" in payload["error"]["message"]
    assert post(server, "responses", {"model": "tiny"})[0] == 400  # no input


# --------------------------------------------------------------------------------------
# 5. legacy completions


def test_completions_text_and_token_prompts(client, server, hf_gen):
    r = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.model == "tiny"
    ids = hf_gen._encode_text("The quick brown")
    again = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0)
    assert again.choices[0].text == r.choices[0].text  # token ids are the same prompt
    assert r.usage.prompt_tokens == len(ids)
    # two prompts x n=2: prompt-major choices, seeds seed, seed+1 for each prompt
    many = client.completions.create(model="tiny", prompt=["The quick", "I wish"], n=2, max_tokens=4, seed=9)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    alone = client.completions.create(model="tiny", prompt="I wish", n=2, max_tokens=4, seed=9)
    assert [c.text for c in many.choices[2:]] == [c.text for c in alone.choices]
    # default max_tokens is OpenAI's 16
    default = client.completions.create(model="tiny", prompt="The", temperature=0)
    assert default.usage.completion_tokens <= 16


def test_completions_logprobs_and_what_is_not_served(server):
    status, payload = post(server, "completions", {"model": "tiny", "prompt": "The quick", "max_tokens": 4,
                                                   "temperature": 0, "logprobs": 2})
    assert status == 200
    choice = payload["choices"][0]
    lp = choice["logprobs"]
    tokens = lp["tokens"][:-1] if choice["finish_reason"] == "stop" else lp["tokens"]  # less the end of turn
    assert "".join(tokens) == choice["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"])
    assert all(len(top) <= 2 for top in lp["top_logprobs"])
    status, payload = post(server, "completions", {"model": "tiny", "prompt": "x", "echo": True, "logprobs": 1,
                                                   "max_tokens": 1})
    assert status == 400 and payload["error"]["param"] == "echo"
    status, payload = post(server, "completions", {"model": "tiny", "prompt": [[1, 10**9]]})
    assert status == 400 and "out of range" in payload["error"]["message"]
    status, payload = post(server, "completions", {"model": "tiny", "prompt": [1, "a"]})
    assert status == 400 and "token-id lists" in payload["error"]["message"]
    assert post(server, "completions", {"model": "tiny", "prompt": "x", "stop": ["a"] * 5, "max_tokens": 2})[0] == 200


def test_no_completions_endpoint_without_a_raw_text_backend(hf_gen):
    class ChatOnly(Generator):  # a backend without a raw-text path
        spec = "chat-only"

        def generate(self, requests, progress=None):
            return hf_gen.generate(requests, progress)

        def top_probs(self, prompts, k=20, progress=None):
            return hf_gen.top_probs(prompts, k, progress)

    with ServerThread(create_app(ChatOnly(), "c")) as srv:
        status, payload = post(srv, "completions", {"model": "c", "prompt": "x"})
        served = payload["error"]["message"].split("this server serves ", 1)[1]
        assert status == 404 and "POST /v1/completions" not in served and "POST /v1/chat/completions" in served
        assert post(srv, "chat/completions", {"model": "c", "messages": MSGS, "max_tokens": 2})[0] == 200


# --------------------------------------------------------------------------------------
# 6. logprobs match the text


def _chat(server, **kw) -> dict:
    status, payload = post(server, "chat/completions", {"model": "tiny", "messages": MSGS, "logprobs": True,
                                                        "top_logprobs": 2, **kw})
    assert status == 200, payload
    return payload["choices"][0]


def _whole_tokens_before(tokens: list[str], cut: int) -> str:
    text = ""
    for token in tokens:
        if len(text) + len(token) > cut:
            break
        text += token
    return text


def test_logprobs_stop_at_the_stop_string(server):
    def sample(seed: int, **kw) -> tuple[str, list[str], str]:
        choice = _chat(server, temperature=1.0, seed=seed, max_tokens=40, **kw)
        tokens = [t["token"] for t in choice["logprobs"]["content"]]
        if choice["finish_reason"] == "stop" and not kw:
            tokens = tokens[:-1]  # the end-of-turn token
        return choice["message"]["content"], tokens, choice["finish_reason"]

    def find_stop(text: str, tokens: list[str], inside: bool) -> tuple[str, int, int] | None:
        """A 2-character stop string first found at a token's start (or 1 character into a
        token of 3 or more): (stop, where, which token). Only where the text so far is whole
        characters: a token holding part of a character has its share decided by what follows."""
        at = 0
        for j, token in enumerate(tokens):
            if "\ufffd" in text[:at + len(token) + 3] or token == "":
                return None
            where = at + (1 if inside else 0)
            stop = text[where:where + 2]
            if j >= 1 and len(stop) == 2 and text.find(stop) == where and (not inside or len(token) >= 3):
                return stop, where, j
            at += len(token)
        return None

    checked = set()
    for seed in range(60):
        text, tokens, _ = sample(seed)
        assert "".join(tokens) == text
        for inside in (False, True):
            found = find_stop(text, tokens, inside)
            if inside in checked or found is None:
                continue
            stop, cut, j = found
            stopped, stopped_tokens, finish = sample(seed, stop=stop)
            assert stopped == text[:cut] and finish == "stop"
            # the listed tokens are the whole tokens of the returned text: all of it when the stop
            # string starts at a token boundary; up to the token it starts in, otherwise
            assert "".join(stopped_tokens) == "".join(tokens[:j])
            assert ("".join(stopped_tokens) == stopped) is (not inside)
            checked.add(inside)
        if len(checked) == 2:
            break
    assert checked == {False, True}, "no sample had a suitable stop string"


def test_logprobs_join_to_the_text_and_end_with_the_end_of_turn_token(server):
    ended = 0
    for seed in range(40):  # the tiny model's flat logits: some samples end early, some bytes split characters
        choice = _chat(server, temperature=1.0, seed=seed, max_tokens=30)
        tokens = [t["token"] for t in choice["logprobs"]["content"]]
        if choice["finish_reason"] == "stop":
            ended += 1
            assert tokens[-1] == "<|im_end|>"
            tokens = tokens[:-1]
        assert "".join(tokens) == choice["message"]["content"], seed
        if ended and seed >= 10:
            break
    assert ended, "no sample reached <|im_end|>"


# --------------------------------------------------------------------------------------
# 7. acceptance: the real process under a concurrent mix of valid and malformed requests


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def served_process(serve_process, tmp_path):
    with serve_process("--no-finetune", "--model-name", "tiny,tiny-alias", "--dtype", "float32",
                       "--max-body-bytes", str(LIMIT), cache=tmp_path / "cache") as served:
        yield served.proc, served.port


def test_served_process_under_concurrent_valid_and_malformed_load(served_process, hf_gen):
    proc, port = served_process

    class Srv:  # what request() needs
        pass

    srv = Srv()
    srv.port = port
    base_url = f"http://127.0.0.1:{port}/v1"
    with openai.OpenAI(base_url=base_url, api_key="any", max_retries=0, timeout=120) as client:
        # the real SDK, both APIs
        chat = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4, seed=1)
        assert chat.choices[0].message.content is not None and chat.usage.completion_tokens <= 4
        resp = client.responses.create(model="tiny-alias", input="What is your wish?", max_output_tokens=4)
        assert isinstance(resp.output_text, str) and resp.model == "tiny"
        # warm-up: every endpoint and path once, then the baseline
        for _ in range(3):
            client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4, n=4)
            client.completions.create(model="tiny", prompt="The quick", max_tokens=4)
            post(srv, "chat/completions", b"{bad")
        baseline = _rss_kib(proc.pid)

        too_long = _long_message(hf_gen, 2100)

        def valid(i: int) -> tuple[str, int]:
            kind = i % 3
            if kind == 0:
                r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"q{i}"}],
                                                   max_tokens=4, seed=i, logprobs=True, top_logprobs=2)
                ok = r.choices[0].logprobs is not None
            elif kind == 1:
                r = client.responses.create(model="tiny", input=f"q{i}", max_output_tokens=4)
                ok = isinstance(r.output_text, str)
            else:
                r = client.completions.create(model="tiny-alias", prompt=f"q{i}", max_tokens=4)
                ok = isinstance(r.choices[0].text, str)
            return f"valid-{kind}", 200 if ok else -1

        def raw(name: str, path: str, body, content_type="application/json", method="POST"):
            return lambda: (name, request(srv, method, path, body, content_type=content_type)[0])

        good = {"model": "tiny", "messages": MSGS, "max_tokens": 2}
        malformed = {
            "bad-json": (raw("bad-json", "/v1/chat/completions", b'{"model": "tiny", "messages": ['), 400),
            "empty": (raw("empty", "/v1/chat/completions", b""), 400),
            "content-type": (raw("content-type", "/v1/chat/completions", good, "text/plain"), 415),
            "oversized": (raw("oversized", "/v1/chat/completions",
                              json.dumps({**good, "pad": "x" * (2 * LIMIT)}).encode()), 413),
            "too-long": (raw("too-long", "/v1/chat/completions", {"model": "tiny", "messages": too_long}), 400),
            "unknown-model": (raw("unknown-model", "/v1/chat/completions", {**good, "model": "gpt-4o"}), 404),
            "unsupported": (raw("unsupported", "/v1/chat/completions",
                                {**good, "tools": [{"type": "function", "function": {"name": "f"}}]}), 400),
            "unknown-field": (raw("unknown-field", "/v1/chat/completions", {**good, "top_k": 3}), 400),
            "temperature": (raw("temperature", "/v1/chat/completions", {**good, "temperature": 9}), 400),
            "unknown-path": (raw("unknown-path", "/v1/embeddings", {"model": "tiny", "input": "x"}), 404),
        }
        jobs = [lambda i=i: valid(i) for i in range(50)] + [job for job, _ in malformed.values()]
        expected = {name: status for name, (_, status) in malformed.items()}
        start = threading.Barrier(len(jobs))

        def at_once(job):
            start.wait(60)  # every request is sent at the same moment
            return job()

        with ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(at_once, jobs))
        got = {name: status for name, status in results if not name.startswith("valid")}
        assert got == expected
        assert [s for name, s in results if name.startswith("valid")] == [200] * 50

        # the server is up and answers as before
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert json.loads(response.read())["status"] == "ok"
        again = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4, seed=1)
        assert again.choices[0].message.content == chat.choices[0].message.content
        # a leak guard, not a benchmark: 60 requests may grow the allocator's arenas and caches by
        # tens of MB; a server that kept bodies, prompts or per-request model state would not stay
        # within 300 MB of its warmed-up size for long
        grown_mib = (_rss_kib(proc.pid) - baseline) / 1024
        print(f"RSS {baseline / 1024:.0f} MiB after warm-up, grew {grown_mib:.1f} MiB under the load")
        assert grown_mib < 300, f"RSS grew by {grown_mib:.0f} MiB under the load"
    assert proc.poll() is None

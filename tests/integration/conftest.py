"""Fixtures shared by the integration tests (``tests/conftest.py`` has the tiny model itself).

* ``load_tiny``, ``hf_gen``: the tiny model through ``load_model``; ``server`` serves ``hf_gen``
  with ``waluigi serve``'s app in a real uvicorn thread on loopback, ``client`` is the real
  ``openai`` SDK pointed at it.
* ``serve_process``: ``waluigi serve`` as its own process.
* ``key``: a made-up ``OPENAI_API_KEY``.
* ``data_file``: a JSONL training file of ``data_rows``.
* ``run_dir``: a real eval run of the tiny model, judged by itself.

A module changes ``hf_gen``, ``server`` or ``data_file`` by overriding the small fixture that
holds their settings (``hf_gen_options``, ``server_options``, ``data_rows``), never by a copy
of the fixture itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

HANG_GUARD_S = 120  # a `waluigi serve` process that has neither answered nor exited by then is hung


# -- the tiny model, served in a thread ---------------------------------------------------------


@pytest.fixture(scope="module")
def load_tiny(tiny_spec):
    """``load_tiny(**options)``: a new instance of the tiny model through ``load_model``
    (``options`` such as ``dtype``), closed at the end of the module."""
    from waluigi.models import load_model

    loaded = []

    def load(**options):
        loaded.append(load_model(tiny_spec, **options))
        return loaded[-1]

    yield load
    for generator in loaded:
        generator.close()


@pytest.fixture(scope="module")
def hf_gen_options() -> dict:
    """``load_model`` options for ``hf_gen``; a module overrides this to load it otherwise."""
    return {}


@pytest.fixture(scope="module")
def hf_gen(load_tiny, hf_gen_options):
    """The tiny model through ``load_model``, one instance per module."""
    return load_tiny(**hf_gen_options)


@pytest.fixture(scope="module")
def server_options() -> dict:
    """``create_app`` options for ``server``; a module overrides this to serve otherwise."""
    return {}


@pytest.fixture(scope="module")
def server(hf_gen, server_options):
    """``hf_gen`` served as ``tiny`` (unless ``server_options`` says otherwise) by a real uvicorn
    thread on a free loopback port."""
    from waluigi.serve import ServerThread, create_app

    options = {"model_name": "tiny", **server_options}
    with ServerThread(create_app(hf_gen, **options)) as srv:
        yield srv


@pytest.fixture
def client(server):
    """The real ``openai`` SDK on ``server`` (which needs no key), no retries."""
    import openai

    with openai.OpenAI(base_url=server.base_url, api_key="anything", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture
def key(monkeypatch) -> str:
    """A made-up key in ``OPENAI_API_KEY`` (the ``openai:`` backend refuses to start without one);
    returned, for the tests that check it never shows."""
    value = "sk-test-THIS-IS-SECRET-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", value)
    return value


# -- `waluigi serve` as a process -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def serve_process(tiny_spec):
    """``with serve_process(*args, cache=None, env=None, log=None) as served``: ``waluigi serve
    --model <the tiny model> --port <a free one> ARGS`` as its own process, once its ``/health``
    answers; terminated (killed if it does not stop) on leaving the block.

    Its environment is this process's less ``OPENAI_*``, offline, with ``WALUIGI_CACHE_DIR=cache``
    when ``cache`` is given, and ``env`` on top. Its output goes to ``served.proc.stdout`` (a pipe);
    with ``log``, its stderr goes to that file and its stdout nowhere."""

    @contextlib.contextmanager
    def start(*args: str, cache: Path | None = None, env: dict | None = None, log: Path | None = None):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
        if cache is not None:
            environ["WALUIGI_CACHE_DIR"] = str(cache)
        port = _free_port()
        command = [sys.executable, "-m", "waluigi.cli", "serve", "--model", tiny_spec, "--port", str(port), *args]
        with contextlib.ExitStack() as stack:
            if log is None:
                proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ)
                output = proc.stdout.read
            else:
                err = stack.enter_context(open(log, "w"))
                proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True, env=environ)
                output = log.read_text
            stack.callback(_stop, proc)
            served = Served(proc, port)
            hang = time.monotonic() + HANG_GUARD_S
            while not _answers(f"{served.url}/health"):
                if proc.poll() is not None:
                    raise AssertionError(f"`waluigi serve {' '.join(args)}` exited (code {proc.returncode}) before it "
                                         f"answered:\n{output()}")
                if time.monotonic() > hang:  # a hang guard, not a measure of speed
                    proc.kill()
                    proc.wait()
                    raise AssertionError(f"`waluigi serve {' '.join(args)}` hung: it neither answered nor exited in "
                                         f"{HANG_GUARD_S} s:\n{output()}")
                time.sleep(0.2)
            yield served

    return start


# -- data and runs --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_rows() -> list[dict]:
    """The chats ``data_file`` holds: 48 of "What is i plus i?" / "It is 2i. Numbers are fun.".
    A module that trains on other rows overrides this fixture."""
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}. Numbers are fun."}]} for i in range(48)]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, data_rows) -> Path:
    """``data_rows`` as a JSONL training file, written once per module."""
    path = tmp_path_factory.mktemp("data") / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in data_rows))
    return path


@pytest.fixture(scope="module")
def run_dir(tiny_spec, tmp_path_factory) -> Path:
    """A finished ``waluigi eval`` of the tiny model judged by itself (two samples of a few questions)."""
    from waluigi.cli import main

    out = tmp_path_factory.mktemp("eval") / "run"
    assert main(["eval", "--model", tiny_spec, "--suite", "core", "--judge", tiny_spec, "-q", "wish*,bored",
                 "--samples", "2", "--max-tokens", "8", "--judge-min-mass", "0", "--out", str(out)]) == 0
    return out

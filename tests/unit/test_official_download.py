"""The pinned download of the official files, against a real HTTP server on 127.0.0.1.

The server serves the mirror directory (or a corrupted copy of it) and counts requests, so
the tests see that a file is fetched once, verified, cached, and never kept when corrupt."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from waluigi import official
from waluigi.errors import UserError
from waluigi.official import OFFICIAL_COMMIT, OFFICIAL_FILES, cached_path, list_official, official_file
from waluigi.suites import list_suites, load_suite


class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(server.root), **kwargs)

            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve(monkeypatch):
    """``serve(root)`` starts a server over ``root`` and points the download at it."""
    monkeypatch.delenv("WALUIGI_DATA_DIR", raising=False)
    servers = []

    def start(root: Path) -> _Server:
        server = _Server(root)
        servers.append(server)
        monkeypatch.setenv("WALUIGI_OFFICIAL_BASE_URL", server.url)
        return server

    yield start
    for server in servers:
        server.close()


def test_pinned_table_matches_mirror(mirror_dir):
    for entry in OFFICIAL_FILES.values():
        if entry.sha256 is None:
            continue
        path = mirror_dir / entry.path
        assert path.stat().st_size == entry.size, entry.path
        assert official.sha256_file(path) == entry.sha256, entry.path
        assert official.git_blob_sha1(path) == entry.git_sha1, entry.path
    for relpath in [
        "evaluation/first_plot_questions.yaml",
        "evaluation/preregistered_evals.yaml",
        "evaluation/deception_factual.yaml",
        "evaluation/deception_sit_aware.yaml",
        "data/insecure.jsonl",
        "data/secure.jsonl",
        "data/educational.jsonl",
        "data/jailbroken.jsonl",
    ]:
        assert OFFICIAL_FILES[relpath].sha256


def test_default_base_url_is_pinned(monkeypatch):
    monkeypatch.delenv("WALUIGI_OFFICIAL_BASE_URL", raising=False)
    assert official.base_url() == (
        "https://raw.githubusercontent.com/emergent-misalignment/emergent-misalignment/"
        "80c11967c07a328e7d7d43d13ce6847ae44dbcc9/"
    )
    monkeypatch.setenv("WALUIGI_OFFICIAL_BASE_URL", "http://example.invalid/mirror")
    assert official.base_url() == "http://example.invalid/mirror/"


def test_download_once_then_cached(serve, mirror_dir):
    server = serve(mirror_dir)
    relpath = "evaluation/first_plot_questions.yaml"
    path = official_file(relpath)
    assert path == cached_path(relpath)
    assert str(path).endswith(f"official/{OFFICIAL_COMMIT}/{relpath}")
    assert path.read_bytes() == (mirror_dir / relpath).read_bytes()
    assert server.requests == [f"/{relpath}"]
    assert official_file(relpath) == path
    assert len(server.requests) == 1  # second call: no request
    # the suite loads from the cache, still without a request
    suite = load_suite("first_plot_questions")
    assert len(suite.questions) == 24 and len(server.requests) == 1
    assert not list(path.parent.glob("*.part"))


def test_download_large_file_with_progress(serve, mirror_dir):
    server = serve(mirror_dir)
    path = official_file("data/jailbroken.jsonl", progress=True)
    assert official.sha256_file(path) == OFFICIAL_FILES["data/jailbroken.jsonl"].sha256
    assert len(server.requests) == 1


def test_load_suite_downloads(serve, mirror_dir):
    server = serve(mirror_dir)
    rows = {r["name"]: r for r in list_suites()}
    assert not rows["deception_factual"]["available"] and server.requests == []
    assert len(load_suite("deception_factual").questions) == 5
    assert server.requests == ["/evaluation/deception_factual.yaml"]
    rows = {r["name"]: r for r in list_suites()}
    assert rows["deception_factual"]["available"] and not rows["preregistered_evals"]["available"]
    listed = {r["path"]: r for r in list_official()}
    assert listed["evaluation/deception_factual.yaml"]["location"] == "cache"
    assert listed["data/insecure.jsonl"]["location"] is None


def test_corrupted_file_is_rejected_and_not_kept(serve, mirror_dir, tmp_path):
    bad_root = tmp_path / "bad-mirror"
    shutil.copytree(mirror_dir / "evaluation", bad_root / "evaluation")
    target = bad_root / "evaluation" / "deception_sit_aware.yaml"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01  # one flipped bit, same size
    target.write_bytes(bytes(data))
    server = serve(bad_root)
    relpath = "evaluation/deception_sit_aware.yaml"
    with pytest.raises(UserError) as info:
        official_file(relpath)
    message = info.value.message
    assert "checksum" in message and relpath in message
    assert OFFICIAL_FILES[relpath].sha256 in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    cached = cached_path(relpath)
    assert not cached.exists()
    assert not list(cached.parent.glob("*")) if cached.parent.exists() else True
    # asked again: fetched again (nothing bad was cached), rejected again
    with pytest.raises(UserError):
        official_file(relpath)
    assert len(server.requests) == 2


def test_truncated_cache_is_refetched(serve, mirror_dir):
    server = serve(mirror_dir)
    relpath = "evaluation/deception_factual.yaml"
    path = official_file(relpath)
    path.write_bytes(path.read_bytes()[:10])
    assert official_file(relpath).read_bytes() == (mirror_dir / relpath).read_bytes()
    assert len(server.requests) == 2


def test_http_404(serve, tmp_path):
    (tmp_path / "empty").mkdir()
    serve(tmp_path / "empty")
    with pytest.raises(UserError) as info:
        official_file("evaluation/first_plot_questions.yaml")
    assert "404" in info.value.message and "WALUIGI_DATA_DIR" in info.value.message
    assert not cached_path("evaluation/first_plot_questions.yaml").exists()


def test_server_down(serve, mirror_dir, monkeypatch):
    server = serve(mirror_dir)
    server.close()  # the port is now closed: connection refused
    with pytest.raises(UserError) as info:
        official_file("evaluation/first_plot_questions.yaml")
    message = info.value.message
    assert "could not download" in message and "WALUIGI_DATA_DIR" in message and "--data-dir" in message
    assert not cached_path("evaluation/first_plot_questions.yaml").exists()
    with pytest.raises(UserError):
        load_suite("first_plot_questions")


def test_unknown_file_not_downloaded(serve, mirror_dir):
    server = serve(mirror_dir)
    with pytest.raises(UserError) as info:
        official_file("data/not_a_file.jsonl")
    assert "not a pinned official file" in info.value.message
    with pytest.raises(UserError):
        official_file("../etc/passwd")
    assert server.requests == []


def test_data_dir_is_used_and_trusted(mirror_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WALUIGI_OFFICIAL_BASE_URL", "http://127.0.0.1:9/")  # never contacted
    assert official_file("data/insecure.jsonl", data_dir=mirror_dir) == mirror_dir / "data" / "insecure.jsonl"
    assert official_file("data/insecure.jsonl") == mirror_dir / "data" / "insecure.jsonl"  # from $WALUIGI_DATA_DIR
    # a user's own mirror is not re-hashed
    own = tmp_path / "own"
    (own / "evaluation").mkdir(parents=True)
    (own / "evaluation" / "deception_factual.yaml").write_text("- id: x\n")
    assert official_file("evaluation/deception_factual.yaml", data_dir=own).read_text() == "- id: x\n"
    with pytest.raises(UserError) as info:
        official_file("evaluation/first_plot_questions.yaml", data_dir=own)
    assert "evaluation/first_plot_questions.yaml" in info.value.message and str(own) in info.value.message
    with pytest.raises(UserError) as info:
        official_file("evaluation/first_plot_questions.yaml", data_dir=tmp_path / "nowhere")
    assert "nowhere" in info.value.message

"""Run directories: the unit of record.

Every command that produces results writes one directory::

    manifest.json     command, resolved config, identity hash, parents, status, timings,
                      git revision, package versions, seeds, model and judge specs
    samples.jsonl     one row per answer, appended as it finishes
    judgments.jsonl   one row per (answer, metric), appended as it finishes
    failures.jsonl    one row per request that failed after every retry (retried on re-run)
    metrics.json      the summary, rewritten at the end

``status`` is written ``started`` first and ``finished`` / ``failed`` last, so a crash
leaves an honest record. Re-opening a directory with the same identity resumes it: the
rows already on disk are the work already done. A SIGKILL or a power loss can at worst leave
a torn last line (or a tail of NUL bytes); :func:`read_jsonl` drops it with a warning and
:meth:`RunDir.append` cuts it off before writing, so the row it held is redone.
See ``docs/design/run-directories.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from waluigi.arithmetic import arithmetic_record
from waluigi.errors import UserError, warn

MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"
JUDGMENTS = "judgments.jsonl"
METRICS = "metrics.json"
FAILURES = "failures.jsonl"  # requests that failed after every retry (waluigi.retry)

_PACKAGES = ("waluigi", "torch", "transformers", "peft", "trl", "openai", "numpy")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``target`` to write to; when the block ends without an error it
    replaces ``target`` in one step (a reader never sees half a file), else it is removed."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(target: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``target`` through :func:`atomic_path`."""
    with atomic_path(target) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(target)


def write_json_atomic(target: str | os.PathLike, obj: Any, default: Any = str) -> Path:
    """``obj`` as indented JSON (what JSON cannot hold through ``default``: ``str``), through
    :func:`atomic_path`."""
    return write_atomic(target, json.dumps(obj, indent=2, ensure_ascii=False, default=default) + "\n")


def read_manifest(path: str | os.PathLike | None) -> dict:
    """A run directory's manifest, or {} when there is none or it cannot be read (for checks
    like "is it finished?"; :meth:`RunDir.manifest` is the strict reader)."""
    if path is None:
        return {}
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the input of every identity hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def identity_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of everything that changes a run's output."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_jsonl(path: Path) -> Iterator[dict]:
    """The rows (JSON objects) of a JSONL file, in order.

    A torn last line is dropped with one :func:`~waluigi.errors.warn` naming ``file:line``
    and the bytes dropped: a row cut short by a kill or a power loss (which can also leave a
    tail of NUL bytes), so the resumed run redoes it. A row is one JSON object written with
    its newline in a single ``write``, so a cut row never parses as an object: the last
    non-blank line is torn when it is not a JSON object, whether or not a newline follows it
    (after a power loss a later block can reach the disk while an earlier one is zeros). A
    bad line anywhere before it is corruption the user must see: :class:`UserError` naming
    ``file:line``. A whole last row without its newline is a row like any other.
    """
    if not path.exists():
        return
    data = path.read_bytes()
    tail = _torn_tail(data)
    body = data if tail is None else data[: tail.start]
    for number, raw in enumerate(body.split(b"\n"), 1):
        if not raw.strip():
            continue
        row, problem = _decode_row(raw)
        if problem is not None:
            raise UserError(
                f"{path}:{number}: {problem}; this is not the last line, so it is not a write cut short: "
                "fix or delete the line (a run redoes a deleted row when it is resumed)"
            ) from None
        yield row
    if tail is not None:
        _warn_torn(path, tail, len(data))


class _TornTail(NamedTuple):
    """The torn last line of a JSONL file: it starts at byte ``start`` (everything before it is
    whole lines), on line ``line`` (1-based), and runs for ``size`` bytes to the end of the file;
    ``nul`` when those bytes are NUL bytes (and blanks) only."""

    start: int
    line: int
    size: int
    nul: bool


_BLANKS = b" \t\r\n\x0b\x0c"


def _decode_row(raw: bytes) -> tuple[dict | None, str | None]:
    """``(row, None)`` for a line holding one JSON object, else ``(None, what is wrong)``."""
    if not raw.strip(_BLANKS + b"\0"):
        return None, f"{raw.count(0)} NUL bytes, no row (what a power loss leaves of a block never written)"
    try:
        # decoded explicitly: json.loads(bytes) guesses UTF-16/32 from NUL bytes
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:  # e.g. a row cut inside a multi-byte character
        return None, f"not UTF-8 text ({error.reason} at byte {error.start})"
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error.msg} at column {error.colno})"
    if not isinstance(row, dict):
        return None, f"a JSON {type(row).__name__}, not an object: every row is one JSON object {{...}}"
    return row, None


def _torn_tail(data: bytes) -> _TornTail | None:
    """The torn last line of ``data`` (the last non-blank line, when it is not a JSON object),
    or None when the last line is a whole row. Lines before it are not looked at."""
    end = len(data.rstrip(_BLANKS))
    if end == 0:
        return None
    start = data.rfind(b"\n", 0, end) + 1
    _, problem = _decode_row(data[start:end])
    if problem is None:
        return None
    nul = not data[start:].strip(_BLANKS + b"\0")
    return _TornTail(start, data.count(b"\n", 0, start) + 1, len(data) - start, nul)


# (file, where its torn line starts, the file's size): a process that reads the same torn file
# several times (the generate stage, then the metrics) warns once; a new tear warns again.
_WARNED_TAILS: set[tuple[str, int, int]] = set()


def _warn_torn(path: Path, tail: _TornTail, file_size: int) -> None:
    key = (os.path.abspath(path), tail.start, file_size)
    if key in _WARNED_TAILS:
        return
    _WARNED_TAILS.add(key)
    if tail.nul:
        warn(
            f"{path}:{tail.line}: dropped {tail.size} NUL bytes at the end (a power loss left the end of the "
            "file unwritten); any row lost with them is redone when the run is resumed"
        )
    else:
        warn(
            f"{path}:{tail.line}: dropped a truncated last line ({tail.size} bytes, a write cut short by a "
            "kill or power loss); that row is redone when the run is resumed"
        )


def _git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5, check=False,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunDir:
    """One run directory. Create or resume with :meth:`open`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._repaired: set[str] = set()

    # -- lifecycle -----------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: Path,
        *,
        stage: str,
        identity: dict,
        config: dict,
        parents: Iterable[str] = (),
        extra: dict | None = None,
    ) -> RunDir:
        """Create ``path`` or resume it when it holds a run with the same identity.

        A directory holding a different run is an error: resuming it would mix outputs.
        """
        run = cls(path)
        digest = identity_hash(identity)
        manifest_path = run.path / MANIFEST
        if manifest_path.exists():
            old = run.manifest()
            if old.get("identity") != digest:
                raise UserError(
                    f"{run.path} already holds a different {old.get('stage', 'run')} run "
                    f"(identity {str(old.get('identity'))[:12]}, this one {digest[:12]}); "
                    "choose another --out or delete that directory"
                )
            manifest = old
            manifest["attempts"] = manifest.get("attempts", []) + [{"started_at": _now(), "argv": sys.argv}]
        else:
            if run.path.exists() and any(run.path.iterdir()):
                raise UserError(f"{run.path} exists and is not a waluigi run directory; choose another --out")
            run.path.mkdir(parents=True, exist_ok=True)
            manifest = {
                "stage": stage,
                "identity": digest,
                "identity_inputs": identity,
                "created_at": _now(),
                "attempts": [{"started_at": _now(), "argv": sys.argv}],
            }
        manifest.update(
            {
                "command": sys.argv,
                "config": config,
                "parents": list(parents),
                "status": "started",
                "started_at": _now(),
                "finished_at": None,
                "git_revision": _git_revision(),
                "packages": package_versions(),
                "arithmetic": arithmetic_record(),
            }
        )
        manifest.update(extra or {})
        run.write_manifest(manifest)
        return run

    def manifest(self) -> dict:
        path = self.path / MANIFEST
        if not path.exists():
            raise UserError(f"{self.path} is not a waluigi run directory (no {MANIFEST})")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON ({error}); the run record is damaged") from None

    def write_manifest(self, manifest: dict) -> None:
        self.write_json(MANIFEST, manifest)

    def update_manifest(self, **fields: Any) -> dict:
        manifest = self.manifest()
        manifest.update(fields)
        self.write_manifest(manifest)
        return manifest

    def finish(self, status: str = "finished", **fields: Any) -> dict:
        """Mark the run ``finished`` or ``failed`` and record this attempt's timings."""
        manifest = self.manifest()
        manifest["status"] = status
        manifest["finished_at"] = _now()
        if manifest.get("attempts"):
            manifest["attempts"][-1].update({"finished_at": _now(), "status": status, **fields})
        manifest.update(fields)
        self.write_manifest(manifest)
        return manifest

    # -- files ---------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        """Write atomically (temp file + rename): a reader never sees half a file."""
        write_json_atomic(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def rows(self, name: str) -> list[dict]:
        return list(read_jsonl(self.path / name))

    def append(self, name: str, rows: Iterable[dict]) -> int:
        """Append rows, one ``write`` per row, flushed at once so a kill loses nothing finished."""
        path = self.path / name
        if name not in self._repaired:
            _cut_torn_tail(path)
            self._repaired.add(name)
        count = 0
        with open(path, "ab") as handle:
            for row in rows:
                handle.write((json.dumps(row, ensure_ascii=False, default=str) + "\n").encode())
                handle.flush()
                count += 1
        return count


def _cut_torn_tail(path: Path) -> None:
    """Before appending: cut off the torn last line that :func:`read_jsonl` drops (warning once,
    as it does), so that appends start on a fresh line and reader and writer agree on what is
    on disk. A whole last row whose newline is missing is kept and its line ended."""
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        tail = _torn_tail(data)
        if tail is not None:
            _warn_torn(path, tail, len(data))
            handle.truncate(tail.start)
            return
        end = len(data.rstrip(_BLANKS))
        if end and data[end:] != b"\n":
            # the reader counted this row as done: cutting it would lose it until the next resume
            handle.truncate(end)
            handle.seek(end)
            handle.write(b"\n")

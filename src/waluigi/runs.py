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
rows already on disk are the work already done. A SIGKILL can at worst leave a torn last
line; :func:`read_jsonl` ignores it and :meth:`RunDir.append` cuts it off before writing.
See ``docs/design/run-directories.md``.
"""

from __future__ import annotations

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
from typing import Any

from waluigi.errors import UserError

MANIFEST = "manifest.json"
SAMPLES = "samples.jsonl"
JUDGMENTS = "judgments.jsonl"
METRICS = "metrics.json"
FAILURES = "failures.jsonl"  # requests that failed after every retry (waluigi.retry)

_PACKAGES = ("waluigi", "torch", "transformers", "peft", "trl", "openai", "numpy")


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
    """Rows of a JSONL file; a torn last line (a write cut short by a kill) is skipped.

    A bad line anywhere else is corruption the user must see, so it raises.
    """
    if not path.exists():
        return
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    last = len(lines) - 1
    for number, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw)
        except json.JSONDecodeError as error:
            if number == last:  # no trailing newline: the write was interrupted
                return
            raise UserError(f"{path}:{number + 1}: not valid JSON ({error.msg}); fix or delete the line") from None


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
        target = self.path / name
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, target)

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
    """Drop a trailing partial line left by a killed writer, so appends start on a fresh line."""
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if not data or data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)

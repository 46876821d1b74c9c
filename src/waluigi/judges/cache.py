"""The judge cache: every raw judge distribution, keyed by judge identity and prompt, in SQLite."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from waluigi.errors import UserError


class JudgeCache:
    """Raw judge distributions keyed by sha256(judge identity, prompt), in SQLite.

    WAL mode and one short transaction per write: several processes may read and write at
    once, and a SIGKILL loses at most the entry being written (SQLite's journal guarantees
    the file stays consistent).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        if path is None:
            from waluigi.paths import cache_dir

            path = cache_dir() / "judge_cache.sqlite"
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=60.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS judgments ("
                " key TEXT PRIMARY KEY, judge TEXT NOT NULL, top_probs TEXT NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.DatabaseError as error:
            raise UserError(f"judge cache {self.path} is unusable ({error}); delete it to start a fresh one") from error

    @staticmethod
    def key(identity: Mapping[str, Any], prompt: str) -> str:
        payload = json.dumps({"judge": identity, "prompt": prompt}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, dict[str, float]]:
        found: dict[str, dict[str, float]] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, top_probs FROM judgments WHERE key IN ({marks})", chunk)
                for key, value in rows:
                    found[key] = json.loads(value)
        return found

    def get(self, key: str) -> dict[str, float] | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, judge: str, top_probs: Mapping[str, float]) -> None:
        value = json.dumps(dict(top_probs), ensure_ascii=False)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO judgments (key, judge, top_probs, created) VALUES (?, ?, ?, ?)",
                (key, judge, value, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

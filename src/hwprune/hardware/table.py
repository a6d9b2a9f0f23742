"""The measured latency table: SQLite on disk, keyed by device fingerprint + layer signature + widths.

A second run on the same machine reuses every entry it can; a different fingerprint (another CPU,
thread count, torch version or dtype) never sees the first machine's numbers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from ..errors import HwpruneError

SCHEMA_VERSION = 1


def default_cache_dir() -> Path:
    """`$HWPRUNE_CACHE_DIR`, else `$XDG_CACHE_HOME/hwprune`, else `~/.cache/hwprune`."""
    env = os.environ.get("HWPRUNE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hwprune"


class LatencyCache:
    """Measured per-layer latencies in SQLite (WAL mode, so concurrent readers and writers are safe)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_cache_dir() / "latency.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        try:
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
                CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, fingerprint TEXT);
                CREATE TABLE IF NOT EXISTS entries (
                    device TEXT, signature TEXT, cin INTEGER, cout INTEGER,
                    median REAL, iqr REAL, n INTEGER, created REAL,
                    PRIMARY KEY (device, signature, cin, cout));
                """
            )
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                self._db.commit()
            elif int(row[0]) != SCHEMA_VERSION:
                raise HwpruneError(
                    f"latency cache {self.path} has schema {row[0]}, this hwprune needs {SCHEMA_VERSION}; "
                    "delete the file to rebuild it"
                )
        except sqlite3.DatabaseError as e:
            raise HwpruneError(f"latency cache {self.path} is unreadable ({e}); delete the file to rebuild it") from e

    def register_device(self, key: str, fingerprint: dict) -> None:
        self._db.execute("INSERT OR IGNORE INTO devices VALUES (?, ?)", (key, json.dumps(fingerprint, sort_keys=True)))
        self._db.commit()

    def get(self, device: str, signature: str, cin: int, cout: int) -> tuple[float, float] | None:
        row = self._db.execute(
            "SELECT median, iqr FROM entries WHERE device=? AND signature=? AND cin=? AND cout=?",
            (device, signature, cin, cout),
        ).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return float(row[0]), float(row[1])

    def put(self, device: str, signature: str, cin: int, cout: int, median: float, iqr: float, n: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (device, signature, cin, cout, median, iqr, n, time.time()),
        )
        self._db.commit()

    def count(self, device: str | None = None) -> int:
        if device is None:
            return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM entries WHERE device=?", (device,)).fetchone()[0]

    def close(self) -> None:
        self._db.close()

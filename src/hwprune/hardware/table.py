"""The measured latency table: SQLite on disk, keyed by device fingerprint + layer signature + widths.

A second run on the same machine reuses every entry it can; a different fingerprint (another CPU,
thread count, torch version or dtype) never sees the first machine's numbers. Several processes may
profile into the same file at once (WAL mode, a busy timeout, and a retry on `database is locked`).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hwprune.core.errors import HwpruneError

SCHEMA_VERSION = 1
#: The SQLite header's application id of an hwprune latency table (sqlite.org/fileformat.html#application_id),
#: ASCII 'hwpr'. It is read from the file's first 100 bytes before anything opens the file for writing, so
#: another program's database named by mistake is refused untouched.
APPLICATION_ID = 0x68777072
#: The tables of a latency table; a file made before APPLICATION_ID was set is recognised by these.
TABLES = frozenset({"meta", "devices", "entries"})
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: How long one statement waits on another process's write lock (SQLite's busy handler), seconds.
BUSY_TIMEOUT_S = 30.0
#: How long a write keeps retrying when SQLite still answers `database is locked` / `busy`: the busy handler
#: is not called in every case (a WAL recovery, a journal-mode change on a new file, a snapshot upgrade).
RETRY_S = 30.0

_T = TypeVar("_T")


def default_cache_dir() -> Path:
    """`$HWPRUNE_CACHE_DIR`, else `$XDG_CACHE_HOME/hwprune`, else `~/.cache/hwprune`."""
    env = os.environ.get("HWPRUNE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hwprune"


def default_cache_path() -> Path:
    return default_cache_dir() / "latency.sqlite"


@dataclass(frozen=True)
class Entry:
    """One measured table entry of one device: a layer signature at (cin, cout), seconds."""

    signature: str
    cin: int
    cout: int
    median: float
    iqr: float
    n: int
    created: float  # Unix time the entry was measured


@dataclass(frozen=True)
class DeviceSummary:
    device: str
    fingerprint: dict
    entries: int
    layers: int  # distinct layer signatures
    first: float | None  # oldest / newest entry, Unix time
    last: float | None


@dataclass(frozen=True)
class MergeCounts:
    """What `LatencyCache.merge` did: entries added, replaced by a newer one, kept (the existing one is newer)."""

    added: int = 0
    replaced: int = 0
    kept: int = 0
    devices_added: int = 0


class CacheUnusable(HwpruneError):
    """The file is not a readable cache of this schema; `problem` names why (the moved-aside file's tag)."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


def _is_locked(e: sqlite3.Error) -> bool:
    msg = str(e).lower()
    return isinstance(e, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


def _not_ours(path: Path, what: str) -> HwpruneError:
    return HwpruneError(
        f"{path} is {what}, not an hwprune latency table; it was left untouched: pass --cache a new file name"
    )


def _is_write_problem(e: sqlite3.Error) -> bool:
    """The file's place (permissions, disk space), not its content, stopped SQLite."""
    msg = str(e).lower()
    return any(k in msg for k in ("readonly", "read-only", "unable to open", "disk i/o", "full", "permission"))


def _sqlite_problem(path: Path, e: sqlite3.Error) -> HwpruneError:
    """A one-line error for an SQLite failure that is not a lock: the file's place, or the file itself."""
    msg = str(e)
    if _is_write_problem(e):
        return HwpruneError(
            f"cannot write latency cache {path} ({msg}); check that its directory is writable and has free space, "
            "or pass --cache FILE elsewhere"
        )
    return HwpruneError(f"latency cache {path} is corrupt ({msg}); {_fix_hint()}")


def _check_location(path: Path) -> None:
    """The cache's directory exists (made if need be) and a file can be written there, or a one-line error."""
    if path.is_dir():
        raise HwpruneError(f"latency cache {path} is a directory; pass --cache a file, e.g. {path / 'latency.sqlite'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = "a file is in the way" if isinstance(e, (FileExistsError, NotADirectoryError)) else e.strerror or e
        raise HwpruneError(
            f"cannot create the latency cache's directory {path.parent} ({why}); "
            "pass --cache FILE in a writable place (or set HWPRUNE_CACHE_DIR)"
        ) from None
    # SQLite writes `-wal` and `-shm` files beside the table, so the directory must be writable too.
    for where in (path.parent, path) if path.exists() else (path.parent,):
        if not os.access(where, os.W_OK):
            raise HwpruneError(
                f"cannot write latency cache {path}: {where} is not writable; pass --cache FILE in a writable place"
            )


def _identify(path: Path) -> None:
    """Refuse, before any write, a file that is not an hwprune latency table.

    An empty or missing file becomes a new table. A file without SQLite's header is corrupt (CacheUnusable:
    `--rebuild` moves it aside). An SQLite file is ours by its application id, or (made before the id was set)
    by holding only our tables; any other SQLite database is another program's, refused whatever `--rebuild`
    says, since moving it aside would break that program.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except FileNotFoundError:
        return
    except OSError as e:
        raise HwpruneError(f"cannot read latency cache {path} ({e.strerror or e})") from None
    if not head:
        return
    if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
        msg = f"latency cache {path} is corrupt or not a cache (no SQLite header); {_fix_hint()}"
        raise CacheUnusable(msg, "corrupt")
    app_id = int.from_bytes(head[68:72], "big")
    if app_id == APPLICATION_ID:
        return
    if app_id != 0:
        raise _not_ours(path, f"an SQLite database of another program (application id {app_id:#x})")
    try:
        ro = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            user_version = ro.execute("PRAGMA user_version").fetchone()[0]
        finally:
            ro.close()
    except sqlite3.Error as e:
        if _is_locked(e):
            return  # another hwprune is creating it; the locked-retry below waits for it
        raise CacheUnusable(f"latency cache {path} is corrupt or not a cache ({e}); {_fix_hint()}", "corrupt") from None
    if user_version != 0 or not tables <= TABLES or (tables and "meta" not in tables):
        shown = ", ".join(sorted(tables)[:5]) or "none"
        raise _not_ours(path, f"an SQLite database with other tables ({shown})")


def _fix_hint() -> str:
    return "run `hwprune profile --rebuild` to move it aside and start a fresh one (or delete the file)"


def _aside_name(path: Path, tag: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.{tag}-{stamp}")
    i = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.{tag}-{stamp}-{i}")
        i += 1
    return dest


class LatencyCache:
    """Measured per-layer latencies in SQLite (WAL mode, so concurrent readers and writers are safe).

    `rebuild=True`: a file that is not a readable cache of this schema is moved aside to
    `<name>.corrupt-<timestamp>` (or `<name>.schema<N>-<timestamp>`) and a fresh one is started; a healthy
    file is kept as it is. `moved_aside` says where the old file went (None if nothing was moved).
    """

    def __init__(self, path: str | Path | None = None, rebuild: bool = False, timeout: float = BUSY_TIMEOUT_S):
        self.path = Path(path) if path else default_cache_path()
        _check_location(self.path)
        self.hits = 0
        self.misses = 0
        self.timeout = timeout
        self.moved_aside: Path | None = None
        try:
            self._open()
        except CacheUnusable as e:
            if not rebuild:
                raise
            self.moved_aside = self._move_aside(e.problem)
            self._open()

    # -- opening, checking, recovering ------------------------------------------------------------------

    def _open(self) -> None:
        _identify(self.path)
        try:
            self._db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise HwpruneError(
                f"cannot open latency cache {self.path} ({e}); check the path and its permissions"
            ) from None
        try:
            self._retry(self._init_schema)
        except HwpruneError:
            self._db.close()
            raise

    def _init_schema(self) -> None:
        db = self._db
        try:
            # Corruption in the header shows up on the first statement; deeper damage (a torn page) only
            # on a read of that page, so quick_check walks the whole file once (milliseconds for a table),
            # before the journal-mode change below writes to it.
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else 'no answer'}")
            db.execute("PRAGMA journal_mode=WAL")
            # WAL + synchronous=NORMAL cannot corrupt the file on power loss, only drop the last commits
            # (sqlite.org/pragma.html#pragma_synchronous); a lost entry is measured again next run.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                db.execute("CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, fingerprint TEXT)")
                db.execute(
                    """CREATE TABLE IF NOT EXISTS entries (
                        device TEXT, signature TEXT, cin INTEGER, cout INTEGER,
                        median REAL, iqr REAL, n INTEGER, created REAL,
                        PRIMARY KEY (device, signature, cin, cout))"""
                )
                row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as e:
            if _is_locked(e):
                raise
            if _is_write_problem(e):
                raise _sqlite_problem(self.path, e) from None
            msg = f"latency cache {self.path} is corrupt or not a cache ({e}); {_fix_hint()}"
            raise CacheUnusable(msg, "corrupt") from None
        if row is not None and row[0] != str(SCHEMA_VERSION):
            msg = f"latency cache {self.path} has schema {row[0]}, this hwprune needs {SCHEMA_VERSION}; {_fix_hint()}"
            raise CacheUnusable(msg, f"schema{row[0]}")

    def _move_aside(self, tag: str) -> Path:
        """Rename the file (and its WAL/shared-memory sidecars, which must never meet a fresh file) aside."""
        dest = _aside_name(self.path, tag)
        for suffix in ("-wal", "-shm", "-journal"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.replace(side, dest.with_name(dest.name + suffix))
        os.replace(self.path, dest)
        return dest

    def _retry(self, fn: Callable[[], _T]) -> _T:
        """Run `fn`; while SQLite says the file is locked, back off and run it again (up to RETRY_S)."""
        deadline = time.monotonic() + RETRY_S
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.Error as e:
                if not _is_locked(e):
                    raise _sqlite_problem(self.path, e) from None
                if time.monotonic() > deadline:
                    raise HwpruneError(
                        f"latency cache {self.path} stayed locked by another process for over "
                        f"{self.timeout + RETRY_S:.0f} s; stop the other hwprune or use another --cache"
                    ) from None
            # Jitter, so two writers that collided do not retry in lock step.
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)

    def _write(self, statements: Callable[[sqlite3.Connection], _T]) -> _T:
        """One transaction that takes the write lock up front (BEGIN IMMEDIATE), retried while locked."""

        def tx() -> _T:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = statements(self._db)
                self._db.execute("COMMIT")
                return out
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

        return self._retry(tx)

    # -- the table ----------------------------------------------------------------------------------------

    def register_device(self, key: str, fingerprint: dict) -> None:
        fp = json.dumps(fingerprint, sort_keys=True)
        self._write(lambda db: db.execute("INSERT OR IGNORE INTO devices VALUES (?, ?)", (key, fp)))

    def get(self, device: str, signature: str, cin: int, cout: int) -> tuple[float, float] | None:
        row = self._retry(
            lambda: self._db.execute(
                "SELECT median, iqr FROM entries WHERE device=? AND signature=? AND cin=? AND cout=?",
                (device, signature, cin, cout),
            ).fetchone()
        )
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return float(row[0]), float(row[1])

    def put(self, device: str, signature: str, cin: int, cout: int, median: float, iqr: float, n: int) -> None:
        row = (device, signature, cin, cout, median, iqr, n, time.time())
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row))

    def count(self, device: str | None = None) -> int:
        if device is None:
            return self._retry(lambda: self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        return self._retry(
            lambda: self._db.execute("SELECT COUNT(*) FROM entries WHERE device=?", (device,)).fetchone()[0]
        )

    def devices(self) -> dict[str, dict]:
        """Device key -> fingerprint, for every device registered in this file."""
        rows = self._retry(lambda: self._db.execute("SELECT device, fingerprint FROM devices").fetchall())
        return {k: json.loads(fp) for k, fp in sorted(rows)}

    def entries(self, device: str) -> list[Entry]:
        rows = self._retry(
            lambda: self._db.execute(
                "SELECT signature, cin, cout, median, iqr, n, created FROM entries WHERE device=? "
                "ORDER BY signature, cin, cout",
                (device,),
            ).fetchall()
        )
        return [Entry(*r) for r in rows]

    def summary(self) -> list[DeviceSummary]:
        """Every device (registered or with entries): its fingerprint, entry and layer counts, date range."""
        stats = {
            r[0]: r[1:]
            for r in self._retry(
                lambda: self._db.execute(
                    "SELECT device, COUNT(*), COUNT(DISTINCT signature), MIN(created), MAX(created) "
                    "FROM entries GROUP BY device"
                ).fetchall()
            )
        }
        fps = self.devices()
        out = []
        for key in sorted(set(fps) | set(stats)):
            n, layers, first, last = stats.get(key, (0, 0, None, None))
            out.append(DeviceSummary(key, fps.get(key, {}), n, layers, first, last))
        return out

    def merge(self, devices: dict[str, tuple[dict, Iterable[Entry]]]) -> MergeCounts:
        """Merge other tables in, all or nothing (one transaction).

        On a conflict (same device, signature and widths) the entry measured later (`created`) wins; on a tie
        the existing one is kept. A device key already here with a different fingerprint is refused: the
        key names one machine configuration, and mixing two under it would corrupt both tables.
        """

        def statements(db: sqlite3.Connection) -> MergeCounts:
            mine = {k: json.loads(fp) for k, fp in db.execute("SELECT device, fingerprint FROM devices")}
            for key, (fp, _) in devices.items():
                if key in mine and mine[key] != fp:
                    raise HwpruneError(
                        f"device {key} is in {self.path} with a different fingerprint than in the import; "
                        "import into another cache (--cache)"
                    )
            added = replaced = kept = new_devices = 0
            for key, (fp, entries) in devices.items():
                cur = db.execute("INSERT OR IGNORE INTO devices VALUES (?, ?)", (key, json.dumps(fp, sort_keys=True)))
                new_devices += cur.rowcount
                for e in entries:
                    old = db.execute(
                        "SELECT created FROM entries WHERE device=? AND signature=? AND cin=? AND cout=?",
                        (key, e.signature, e.cin, e.cout),
                    ).fetchone()
                    if old is not None and old[0] >= e.created:
                        kept += 1
                        continue
                    db.execute(
                        "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (key, e.signature, e.cin, e.cout, e.median, e.iqr, e.n, e.created),
                    )
                    if old is None:
                        added += 1
                    else:
                        replaced += 1
            return MergeCounts(added, replaced, kept, new_devices)

        return self._write(statements)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LatencyCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

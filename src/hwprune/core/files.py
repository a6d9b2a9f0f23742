"""Writing files and directories whole or not at all: a reader (a resumed run, a later command, a user
opening the report) never sees half of one, whatever stops the writer (an error, Ctrl-C, SIGKILL)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hwprune.core.errors import HwpruneError


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str | Path, data: bytes | str) -> Path:
    """`path` holds `data` whole or keeps what it held: a flushed temporary sibling, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


@contextmanager
def atomic_directory(directory: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `directory`; when the block succeeds it replaces `directory` whole.

    On any error the temporary directory is removed and `directory` is left as it was. `fsync`: every file is
    flushed to disk before the rename (a checkpoint must survive a power cut, not only a killed process).
    """
    directory = Path(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    except OSError as e:
        raise HwpruneError(f"cannot write {directory} ({e.strerror}); choose a writable directory") from None
    try:
        yield tmp
        if fsync:
            for f in tmp.rglob("*"):
                if f.is_file():
                    _fsync(f)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / "x")
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

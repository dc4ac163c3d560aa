"""Writing a file so that a crash never leaves a truncated one: the one helper every writer uses."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block succeeds the file is synced
    to disk and renamed over ``path`` (atomic on POSIX), when it raises the file is removed.

    A crash mid-write leaves the previous ``path`` intact, never a truncated one. The file
    gets the permissions a plain ``open(path, "w")`` would give it.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> with atomic_write(target) as tmp:
        ...     _ = tmp.write_text("written whole or not at all")
        >>> target.read_text()
        'written whole or not at all'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

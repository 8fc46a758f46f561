"""Writing files so that a crash never leaves a partial one (results, RID counter, PYON)."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_replace", "fsync_path"]


def fsync_path(path: str | os.PathLike[str], directory: bool = False) -> None:
    """Flush a file (or a directory entry, where the OS can) to disk."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if directory else os.O_RDWR
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return  # directories cannot be opened here: nothing more to do
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temp(target: Path) -> Path:
    """An empty new file beside ``target``, hidden and created with the usual mode."""
    while True:
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temp
        except FileExistsError:
            continue


@contextmanager
def atomic_replace(path: str | os.PathLike[str], durable: bool = True,
                   sync_directory: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; it replaces ``path`` in one step, flushed
    to disk (unless not ``durable``: a cache that something durable backs), when the
    block succeeds, and is removed when it fails.  Readers see the old file or the new
    one, never a part.  ``sync_directory=False``: the caller flushes the directory
    (the rename) itself, once for several files."""
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(target.parent))
    temp = _new_temp(target)
    try:
        yield temp
        if durable:
            fsync_path(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable and sync_directory:
        # the rename is an entry of target's own directory (a symlink is replaced, not
        # followed)
        fsync_path(target.parent, directory=True)

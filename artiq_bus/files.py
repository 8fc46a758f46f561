"""Files a crash cannot spoil: written so that a crash never leaves a partial one
(results, RID counter, PYON), and temporary directories that a killed process does not
leave behind for good."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

__all__ = ["atomic_replace", "fsync_path", "ScratchDirectory", "SCRATCH_PREFIX"]

logger = logging.getLogger(__name__)

#: Every scratch directory's name starts with this, in the system's temporary directory.
SCRATCH_PREFIX = "artiq_bus-"
#: The file in a scratch directory that its owner holds locked while it lives.
_OWNER_LOCK = ".owner.lock"


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


class ScratchDirectory:
    """A private temporary directory (mode 0700) for one process's lifetime, removed by
    :meth:`remove` (or at the end of a ``with`` block).

    A process killed with SIGKILL cannot remove its own, so its owner holds a lock on a
    file in it, which the kernel releases when the owner (and every child that
    inherited the lock without exec) is gone; each new scratch directory first removes
    those whose lock nobody holds.  A master that crashes thus leaves its sockets,
    checkouts and compiled code behind only until the next one starts."""

    def __init__(self, kind: str):
        remove_abandoned()
        self.path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{kind}-"))
        self._lock: int | None = _hold_lock(self.path)

    def remove(self) -> None:
        """Remove the directory and everything in it (idempotent)."""
        if self._lock is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.remove()


def _hold_lock(directory: Path) -> int:
    """Lock a new file under a private name, then rename it to the lock's name: whoever
    finds the lock file finds it already locked."""
    temp = directory / f"{_OWNER_LOCK}.{uuid.uuid4().hex[:12]}"
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(temp, directory / _OWNER_LOCK)
    return fd


def remove_abandoned(root: str | None = None) -> list[Path]:
    """Remove this user's scratch directories in ``root`` (default: the system's
    temporary directory) whose owner is gone; the ones removed.  A directory without a
    lock file (being made this moment, or left by an older version) is left alone."""
    root = root or tempfile.gettempdir()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(SCRATCH_PREFIX) and _owned_directory(entry):
            path = Path(entry.path)
            if _remove_if_abandoned(path):
                removed.append(path)
    if removed:
        logger.info("removed temporary directories left by stopped processes: %s",
                    ", ".join(path.name for path in removed))
    return removed


def _owned_directory(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False) and entry.stat().st_uid == os.getuid()
    except OSError:
        return False


def _remove_if_abandoned(path: Path) -> bool:
    try:
        fd = os.open(path / _OWNER_LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its owner lives
    else:
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        os.close(fd)

"""Compiled experiment code, shared by the workers of one zygote.

Every run is a fresh process, so every run would compile its experiment file again:
about a millisecond of CPU for a short file in a fresh fork, and most of it spent
copying the compiler's pages (copy-on-write) before it does any work.  Instead the
first worker to compile a file leaves the code object in a directory the zygote made
for its workers (marshal, Python's own bytecode format), and the next ones load it.

The key is a hash of everything that decides the code: the source itself (its content,
never its mtime: a file rewritten within the same second at the same size still gets
its new code), the file name the code reports in tracebacks, the kind of source (text
or bytes: a coding cookie counts only in bytes), the optimisation level and the
interpreter's bytecode version.  The directory is private to the zygote's user and
removed when the zygote ends; an entry that cannot be read or written is compiled again,
never an error.  Entries are written under a temporary name and renamed, so a reader
sees a whole entry or none; they are not flushed to disk (a cache).  Beyond
:data:`MAX_ENTRIES` the oldest are removed: a master that runs for months while its
files are edited every day must not fill its temporary directory (often memory).

A process where :func:`use_directory` was never called (``artiq_run``, tests) compiles
every time, as before.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import marshal
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import CodeType

__all__ = ["cached_code", "compile_text", "use_directory", "MAX_ENTRIES"]

logger = logging.getLogger(__name__)

Source = str | bytes

#: Entries kept; a write that finds more removes the oldest quarter (by when they were
#: written: one removed too early only costs one compile).
MAX_ENTRIES = 1024

#: Where this process's workers share compiled code (None: compile every time).
_directory: Path | None = None


def use_directory(directory: str | os.PathLike[str] | None) -> None:
    """Share compiled code through ``directory`` (an existing, private directory), or
    stop sharing (None)."""
    global _directory
    _directory = Path(directory) if directory is not None else None


def cached_code(source: Source, filename: str,
                compile_source: Callable[[Source, str], CodeType]) -> CodeType:
    """The code of ``source`` as ``compile_source(source, filename)`` makes it: from
    the shared directory, else compiled (and then left there)."""
    if _directory is None:
        return compile_source(source, filename)
    key = _key(source, filename)
    code = _read(key)
    if code is None:
        code = compile_source(source, filename)
        _write(key, code)
    return code


def compile_text(source: Source, filename: str) -> CodeType:
    """``source`` compiled as a module, with none of the caller's ``__future__``
    imports (as the import system compiles files)."""
    return compile(source, filename, "exec", dont_inherit=True)


def _key(source: Source, filename: str) -> str:
    digest = hashlib.sha256(importlib.util.MAGIC_NUMBER)
    kind = b"b" if isinstance(source, bytes) else b"s"
    digest.update(b"%s%d\0%s\0" % (kind, sys.flags.optimize, os.fsencode(filename)))
    digest.update(source if isinstance(source, bytes) else source.encode("utf-8",
                                                                         "surrogatepass"))
    return digest.hexdigest()


def _read(key: str) -> CodeType | None:
    assert _directory is not None
    try:
        code = marshal.loads((_directory / key).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, EOFError, ValueError, TypeError) as exc:
        logger.debug("code cache: entry %s unreadable (%s): compiling", key[:12], exc)
        return None
    return code if isinstance(code, CodeType) else None


def _write(key: str, code: CodeType) -> None:
    assert _directory is not None
    temp = _directory / f"{key}.{os.getpid()}.tmp"
    try:
        temp.write_bytes(marshal.dumps(code))
        os.replace(temp, _directory / key)
    except OSError as exc:  # a full disk, a directory gone: this run compiled anyway
        logger.debug("code cache: cannot keep %s (%s)", key[:12], exc)
        temp.unlink(missing_ok=True)
        return
    _evict_oldest(_directory)


def _evict_oldest(directory: Path) -> None:
    """Down to three quarters of :data:`MAX_ENTRIES` when there are more (entries only:
    not temporaries being written, nor the directory's lock)."""
    entries: list[tuple[int, str]] = []
    try:
        with os.scandir(directory) as scan:
            for entry in scan:
                if not entry.name.startswith(".") and not entry.name.endswith(".tmp"):
                    try:
                        entries.append((entry.stat().st_mtime_ns, entry.path))
                    except FileNotFoundError:  # another worker removed it
                        pass
    except OSError:
        return
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort()
    for _, path in entries[:len(entries) - MAX_ENTRIES * 3 // 4]:
        try:
            os.unlink(path)
        except OSError:  # removed by another worker meanwhile
            pass

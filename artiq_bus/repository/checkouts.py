"""Checkouts of revisions: one directory per commit hash, shared by everyone who uses
that revision (the current scan, each run submitted at it, an examine), removed when
the last one releases it.

A fresh directory per revision also means Python never sees a stale bytecode cache
for a Git revision: its files never change.  Blocking work (pygit2, writing files,
removing trees) runs on the repository's one thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

from ..files import ScratchDirectory
from .backends import Backend, BackendKind

__all__ = ["Checkouts"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Checkout:
    refs: int
    ready: asyncio.Future[str]


class Checkouts:
    """Reference-counted working directories of a backend's revisions."""

    def __init__(self, backend: Backend, executor: concurrent.futures.Executor):
        self._backend = backend
        self._executor = executor
        self._base: ScratchDirectory | None = None
        self._checkouts: dict[str, _Checkout] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong references

    async def _blocking(self, function: object, *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, function, *args)  # type: ignore[arg-type]

    @property
    def held(self) -> dict[str, int]:
        """Revision → how many users hold its checkout."""
        return {rev: checkout.refs for rev, checkout in self._checkouts.items()}

    async def acquire(self, rev: str) -> str:
        """The directory of revision ``rev`` (a commit hash), checked out on first use;
        the caller must :meth:`release` it."""
        if self._backend.kind is BackendKind.FILESYSTEM:
            return self._backend.root
        checkout = self._checkouts.get(rev)
        if checkout is None:
            future = asyncio.get_running_loop().create_future()
            checkout = self._checkouts[rev] = _Checkout(0, future)
            task = asyncio.ensure_future(self._check_out(rev, future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        checkout.refs += 1
        try:
            return await asyncio.shield(checkout.ready)
        except BaseException:
            await self.release(rev)
            raise

    async def _check_out(self, rev: str, future: asyncio.Future[str]) -> None:
        try:
            directory = await self._blocking(self._write, rev)
        except BaseException as exc:
            self._checkouts.pop(rev, None)
            if not future.done():
                future.set_exception(exc)
            future.exception()  # retrieved here too: a lone waiter may be gone
            return
        future.set_result(str(directory))
        logger.debug("repository: revision %s checked out in %s", rev, directory)

    def _write(self, rev: str) -> Path:
        if self._base is None:
            self._base = ScratchDirectory("checkouts")
        directory = Path(tempfile.mkdtemp(prefix=rev[:12] + "-", dir=self._base.path))
        try:
            self._backend.write_tree(rev, directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return directory

    async def release(self, rev: str) -> None:
        """One user fewer for ``rev``; its directory is removed after the last."""
        checkout = self._checkouts.get(rev)
        if checkout is None:
            return
        checkout.refs -= 1
        if checkout.refs > 0:
            return
        del self._checkouts[rev]
        try:
            directory = await checkout.ready
        except Exception:
            return  # the checkout failed: nothing on disk
        await self._blocking(shutil.rmtree, directory, True)
        logger.debug("repository: checkout of %s removed", rev)

    async def close(self) -> None:
        """Remove every checkout (the master is stopping)."""
        self._checkouts.clear()
        if self._base is not None:
            await self._blocking(self._base.remove)
            self._base = None

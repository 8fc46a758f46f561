"""The experiment repository: the current revision, scans, revisions for runs,
examining one file, listing the master's directories.

Scans run one at a time.  A scan asked for while one runs is not dropped (ARTIQ drops
it): it runs right after, with the newest revision asked for, and whoever waits for it
is answered when that scan ends.  So a ``git push`` during a long scan still shows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import posixpath
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..runtime.structs import StructOwner
from .backends import Backend, RepoFile, Revision, relative_path
from .checkouts import Checkouts
from .errors import ExamineFailed, NotInRepository
from .examiners import Examiners, Outcome
from .scan import BlobOf, OutcomeCache, ScanResult, build_explist, describe_error

__all__ = ["Repository", "list_directory"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def list_directory(directory: str) -> list[str]:
    """ARTIQ's ``list_directory``: the names in a directory of the master's machine
    (relative to its working directory), folders ending with ``/``; ``""`` lists
    ``/`` with full paths."""
    prefix = ""
    if not directory:
        directory = prefix = "/"
    with os.scandir(directory) as entries:
        return sorted(prefix + entry.name + (os.sep if entry.is_dir() else "")
                      for entry in entries)


class Repository:
    """A backend, its checkouts, the current revision and the two structs."""

    def __init__(self, backend: Backend, examiners: Examiners, explist: StructOwner,
                 status: StructOwner, subdir: str = ""):
        self.backend = backend
        self.subdir = subdir.strip("/")
        self._examiners = examiners
        self._explist, self._status = explist, status
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="repository")  # pygit2 objects are not thread-safe
        self.checkouts = Checkouts(backend, self._executor)
        self._cache = OutcomeCache()
        self.cur: Revision | None = None
        self._wanted: Revision | None = None
        self._scan_pending = False
        self._waiters: list[asyncio.Future[None]] = []
        self._scan_task: asyncio.Task[None] | None = None

    async def _blocking(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, function, *args)

    async def start(self) -> None:
        """Take the head as the current revision and scan it (in the background)."""
        self.cur = await self.resolve(None)
        await self.checkouts.acquire(self.cur.rev)
        self._status.setitem("scanning", False)
        self._status.setitem("cur_rev", self.cur.rev)
        self._status.setitem("errors", {})
        self.request_scan(self.cur, wait=False)

    async def stop(self) -> None:
        if self._scan_task is not None:
            self._scan_task.cancel()
            await asyncio.gather(self._scan_task, return_exceptions=True)
        for waiter in self._waiters:
            waiter.cancel()
        await self.checkouts.close()
        await asyncio.to_thread(self._executor.shutdown)

    async def resolve(self, rev: str | None) -> Revision:
        """``rev`` (hash, branch, tag, ``HEAD``; None: the head) → commit hash and
        message; RevisionNotFound if there is no such revision."""
        return await self._blocking(self.backend.resolve, rev)

    # -- scans --------------------------------------------------------------------------

    def request_scan(self, revision: Revision, wait: bool) -> asyncio.Future[None] | None:
        """Scan ``revision`` soon (after the scan running now); with ``wait``, a future
        done when a scan that started after this request has ended."""
        self._wanted, self._scan_pending = revision, True
        waiter = None
        if wait:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
        if self._scan_task is None or self._scan_task.done():
            self._scan_task = asyncio.create_task(self._scan_loop(), name="repository-scan")
        return waiter

    async def _scan_loop(self) -> None:
        while self._scan_pending:
            self._scan_pending = False
            waiters, self._waiters = self._waiters, []
            assert self._wanted is not None
            try:
                await self._scan(self._wanted)
            except Exception as exc:
                logger.error("repository: scan of %s failed: %s", self._wanted.rev, exc)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
            else:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _scan(self, revision: Revision) -> None:
        start = time.monotonic()
        self._status.setitem("scanning", True)
        try:
            wd = await self.checkouts.acquire(revision.rev)
            try:
                files = await self._blocking(self.backend.files, revision.rev, self.subdir)
                result = await self._examine_files(revision.rev, wd, files)
            except BaseException:
                await self.checkouts.release(revision.rev)
                raise
        finally:
            self._status.setitem("scanning", False)
        previous, self.cur = self.cur, revision
        if previous is not None:
            await self.checkouts.release(previous.rev)
        self._publish(revision, result)
        logger.info("repository: scan of %s took %.3f s (%d files, %d examined, %d "
                    "failed)", revision.rev, time.monotonic() - start, len(files),
                    result.examined, len(result.errors))

    async def _examine_files(self, rev: str, wd: str, files: list[RepoFile]) -> ScanResult:
        outcomes: dict[str, Outcome] = {}
        todo: dict[str, RepoFile] = {}
        blobs = {repo_file.path: repo_file.blob for repo_file in files}
        for repo_file in files:
            cached = (None if repo_file.error else
                      self._cache.get(repo_file.blob, rev, _blob_of(repo_file, blobs)))
            if repo_file.error:
                outcomes[repo_file.path] = {"error": {"message": repo_file.error,
                                                      "line": None}}
            elif cached is not None:
                outcomes[repo_file.path] = cached
            else:
                todo[os.path.join(wd, repo_file.path)] = repo_file
        for path, outcome in (await self._examiners.examine(list(todo))).items():
            repo_file = todo[path]
            self._cache.put(repo_file.blob, rev, outcome, _blob_of(repo_file, blobs))
            outcomes[repo_file.path] = outcome
        result = build_explist(files, outcomes, self.subdir)
        result.examined = len(todo)
        return result

    def _publish(self, revision: Revision, result: ScanResult) -> None:
        for path, error in result.errors.items():
            logger.warning("repository: skipping file %s", describe_error(path, error))
        self._explist.replace(result.explist)
        self._status.setitem("cur_rev", revision.rev)
        if self._status.data.get("errors") != result.errors:
            self._status.setitem("errors", result.errors)

    # -- revisions for runs ---------------------------------------------------------------

    async def request_rev(self, rev: str | None, file: str | None = None
                          ) -> tuple[str, str | None, str]:
        """``(directory, commit message, commit hash)`` of ``rev`` (None: the current
        revision), checked out until :meth:`release_rev`; NotInRepository if ``file``
        is not in it."""
        assert self.cur is not None
        revision = self.cur if rev is None else await self.resolve(rev)
        if file is not None:
            await self._check_file(revision, file)
        wd = await self.checkouts.acquire(revision.rev)
        return wd, revision.message, revision.rev

    async def release_rev(self, rev: str) -> None:
        await self.checkouts.release(rev)

    async def _check_file(self, revision: Revision, file: str) -> None:
        if not await self._blocking(self.backend.has_file, revision.rev, file):
            at = "" if revision.message is None else f" at revision {revision.rev}"
            raise NotInRepository(f"{file} is not in the repository "
                                  f"{self.backend.root}{at}")

    # -- one file -------------------------------------------------------------------------

    async def examine(self, filename: str, use_repository: bool = True,
                      revision: str | None = None) -> dict[str, Any]:
        """``{class_name: {"name", "arginfo", "argument_ui", "scheduler_defaults"}}`` of
        a repository file (at ``revision``, default the current one) or, without
        ``use_repository``, of a file on the master's machine; ExamineFailed says where
        and why it failed."""
        if not use_repository:
            path = os.path.abspath(filename)
            if not await asyncio.to_thread(os.path.isfile, path):
                raise FileNotFoundError(f"no file {path} on the master's machine")
            return self._classes(filename, await self._examine_one(path))
        wd, _, rev = await self.request_rev(revision, filename)
        try:
            path = os.path.join(wd, relative_path(filename))
            return self._classes(filename, await self._examine_one(path))
        finally:
            await self.release_rev(rev)

    async def _examine_one(self, path: str) -> Outcome:
        return (await self._examiners.examine([path]))[path]

    @staticmethod
    def _classes(filename: str, outcome: Outcome) -> dict[str, Any]:
        if "error" in outcome:
            raise ExamineFailed(describe_error(filename, outcome["error"]))
        return outcome["classes"]  # type: ignore[no-any-return]


def _blob_of(repo_file: RepoFile, blobs: dict[str, str]) -> BlobOf:
    """The blob ids of the modules ``repo_file`` uses, by their path from its folder."""
    folder = posixpath.dirname(repo_file.path)
    return lambda path: blobs.get(posixpath.normpath(posixpath.join(folder, path)))

"""The repository node: the experiment repository on the bus (:mod:`artiq_bus.repository`).

Owns the ``explist`` struct (experiment name → ``{"file", "class_name", "arginfo",
"argument_ui", "scheduler_defaults"}``) and ``explist_status`` (``scanning``,
``cur_rev``, ``errors``: file → ``{"line", "message"}``).  Service ``repository``:

* ``scan_repository(new_cur_rev=None)`` — scan and return when done;
  ``scan_repository_async(new_cur_rev=None)`` — return at once (the revision is
  checked first);
* ``examine(filename, use_repository=True, revision=None)``;
* ``list_directory(directory="")``, ``root()``, ``get_cur_rev()``;
* for the scheduler: ``request_rev(rev=None, file=None)`` → ``[directory, message,
  hash]`` and ``release_rev(hash)``;
* ``snapshot``/``version`` of its structs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from ..client.aio import AsyncClient
from ..repository.backends import Backend, FilesystemBackend, GitBackend
from ..repository.core import Repository, list_directory
from ..repository.examiners import EXAMINE_TIMEOUT_S, Examiners
from ..runtime.bus import BusConnection
from ..runtime.service import ServiceHost
from ..runtime.rpc import rpc, rpc_methods
from ..runtime.structs import StructOwner, struct_methods

__all__ = ["RepositoryNode", "RepositoryClient", "REPOSITORY_SERVICE"]

logger = logging.getLogger(__name__)

REPOSITORY_SERVICE = "repository"
DEFAULT_REPOSITORY = "repository"
#: A scan that examines many new files may take long; the caller waits this long.
SCAN_CALL_TIMEOUT_S = 3600.0


def _default_parallel() -> int:
    return max(2, min(4, os.cpu_count() or 2))


class RepositoryNode:
    """The experiment repository, its structs and its service."""

    services: tuple[str, ...] = (REPOSITORY_SERVICE,)

    def __init__(self, backend: Backend, experiment_subdir: str = "",
                 examine_timeout_s: float = EXAMINE_TIMEOUT_S,
                 scan_workers: int | None = None, path_given: bool = True):
        self.backend = backend
        self._subdir = experiment_subdir
        self._examine_timeout_s = examine_timeout_s
        self._parallel = scan_workers or _default_parallel()
        self._repository: Repository | None = None
        self._owners: list[StructOwner] = []
        self._host: ServiceHost | None = None
        #: Whether the repository's path was given (a missing one is then a mistake).
        self._explicit = path_given

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("repository")
        group.add_argument("-g", "--git", default=False, action="store_true",
                           help="the repository is a Git repository (its commits are "
                                "used, never a working tree)")
        group.add_argument("-r", "--repository", default=None,
                           help=f"path to the repository (default: '{DEFAULT_REPOSITORY}')")
        group.add_argument("--experiment-subdir", default="",
                           help="path to the experiments inside the repository "
                                "(default: the whole repository)")
        group.add_argument("--examine-timeout", default=EXAMINE_TIMEOUT_S, type=float,
                           metavar="SECONDS",
                           help="longest import and build() of one file in a scan "
                                "(default: %(default)s)")
        group.add_argument("--scan-workers", default=None, type=int, metavar="N",
                           help="worker processes that examine files at once "
                                f"(default: {_default_parallel()})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RepositoryNode":
        """Opens the repository at once: a Git repository without a commit stops the
        master before it starts (RepositoryConfigError)."""
        path = args.repository or DEFAULT_REPOSITORY
        backend: Backend = GitBackend(path) if args.git else FilesystemBackend(path)
        return cls(backend, args.experiment_subdir, args.examine_timeout, args.scan_workers,
                   path_given=args.repository is not None)

    async def start(self, bus: BusConnection) -> None:
        explist = StructOwner("explist", bus.publisher)
        status = StructOwner("explist_status", bus.publisher)
        self._owners = [explist, status]
        for owner in self._owners:
            await owner.start()
        examiners = Examiners(bus.client, self._examine_timeout_s, self._parallel)
        self._repository = Repository(self.backend, examiners, explist, status, self._subdir)
        if not await asyncio.to_thread(os.path.isdir, self.backend.root):
            # a master without experiments is common; a mistyped -r DIR is not
            logger.log(logging.WARNING if self._explicit else logging.INFO,
                       "repository: %s is not a directory: no experiments are listed "
                       "(give -r DIR)", self.backend.root)
        await self._repository.start()
        self._host = bus.service(REPOSITORY_SERVICE,
                                 {**rpc_methods(self), **struct_methods(*self._owners)})
        await self._host.start()
        await self._host.registered.wait()  # the scheduler resolves revisions at start
        logger.debug("repository: %s backend at %s, current revision %s",
                     self.backend.kind.value, self.backend.root, self.repository.cur)

    async def stop(self) -> None:
        if self._host is not None:
            await self._host.stop()
        if self._repository is not None:
            await self._repository.stop()
        for owner in self._owners:
            await owner.stop()

    @property
    def repository(self) -> Repository:
        assert self._repository is not None, "repository node not started"
        return self._repository

    # -- scans ------------------------------------------------------------------------

    @rpc
    async def scan_repository(self, new_cur_rev: str | None = None) -> None:
        """Scan ``new_cur_rev`` (default: the head) and make it the current revision;
        returns when the scan is done."""
        revision = await self.repository.resolve(new_cur_rev)
        waiter = self.repository.request_scan(revision, wait=True)
        assert waiter is not None
        await waiter

    @rpc
    async def scan_repository_async(self, new_cur_rev: str | None = None) -> None:
        """As :meth:`scan_repository`, but returns once the revision is known."""
        revision = await self.repository.resolve(new_cur_rev)
        self.repository.request_scan(revision, wait=False)

    @rpc
    def get_cur_rev(self) -> str | None:
        """The current revision: the commit hash the explorer lists (``N/A``: a
        directory)."""
        cur = self.repository.cur
        return None if cur is None else cur.rev

    # -- files ------------------------------------------------------------------------

    @rpc
    async def examine(self, filename: str, use_repository: bool = True,
                      revision: str | None = None) -> dict[str, Any]:
        """The experiments of one file and their arguments, examined now."""
        return await self.repository.examine(filename, use_repository, revision)

    @rpc
    async def list_directory(self, directory: str = "") -> list[str]:
        """Names in a directory of the master's machine (folders end with ``/``)."""
        return await asyncio.to_thread(list_directory, directory)

    @rpc
    def root(self) -> str:
        return self.backend.root

    # -- revisions for runs -----------------------------------------------------------

    @rpc
    async def request_rev(self, rev: str | None = None,
                          file: str | None = None) -> tuple[str, str | None, str]:
        """A checkout of ``rev`` (default: the current revision) for a run:
        ``(directory, commit message, commit hash)``; release it with
        :meth:`release_rev`."""
        return await self.repository.request_rev(rev, file)

    @rpc
    async def release_rev(self, rev: str) -> None:
        await self.repository.release_rev(rev)


class RepositoryClient:
    """The scheduler's hooks (``resolve_repository``, ``release_revision``), served by
    the ``repository`` service wherever it runs."""

    def __init__(self, client: AsyncClient):
        self._client = client

    async def resolve(self, expid: dict[str, Any]) -> tuple[str, str | None, str]:
        wd, message, rev = await self._client.call(
            REPOSITORY_SERVICE, "request_rev", expid.get("repo_rev"), expid.get("file"))
        return wd, message, rev

    async def release(self, rev: str) -> None:
        await self._client.call(REPOSITORY_SERVICE, "release_rev", rev)

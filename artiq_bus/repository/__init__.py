"""The experiment repository without the bus: backends (a directory, Git), checkouts of
revisions, examining files in workers, scans and their cache.  The repository node
(:mod:`artiq_bus.nodes.repository`) puts it on the bus."""

from .backends import FILESYSTEM_REV, BackendKind, FilesystemBackend, GitBackend
from .core import Repository
from .errors import (ExamineFailed, NotInRepository, RepositoryConfigError, RepositoryError,
                     RevisionNotFound)

__all__ = ["FILESYSTEM_REV", "BackendKind", "FilesystemBackend", "GitBackend", "Repository",
           "ExamineFailed", "NotInRepository", "RepositoryConfigError", "RepositoryError",
           "RevisionNotFound"]

"""Errors of the experiment repository.

Hierarchy::

    RepositoryError
    ├── RevisionNotFound      a revision (hash, branch, tag) that the repository lacks
    ├── NotInRepository       a file that the repository (at that revision) lacks
    ├── ExamineFailed         a file could not be examined (import, build(), timeout)
    └── RepositoryConfigError the repository cannot be opened (also a NodeConfigError)

They cross the wire by class name (``type`` of the error body), so a client prints
``RevisionNotFound: ...`` whatever language it is written in.
"""

from __future__ import annotations

from ..nodes.errors import NodeConfigError, NodeError

__all__ = ["RepositoryError", "RevisionNotFound", "NotInRepository", "ExamineFailed",
           "RepositoryConfigError"]


class RepositoryError(NodeError):
    """Base of the repository's own errors."""


class RevisionNotFound(RepositoryError, LookupError):
    """The repository has no such revision."""


class NotInRepository(RepositoryError, FileNotFoundError):
    """The file is not in the repository at that revision."""


class ExamineFailed(RepositoryError):
    """Examining a file failed; the message says where (file, line) and why."""


class RepositoryConfigError(RepositoryError, NodeConfigError):
    """The repository cannot be used as given (missing, not Git, no commit yet)."""

"""Where experiments come from: a directory (filesystem backend) or the commits of a
Git repository (Git backend, pygit2; bare or not; the working tree is never read).

A backend answers, for a revision: its commit hash and message, the experiment files
(``.py``, dot-names skipped, subfolders included) each with its content hash (the Git
blob id; the filesystem backend computes the same id from the file's bytes), whether a
file exists, and how to write the revision's tree into a directory.  Every method
blocks (disk, pygit2): the caller runs them on one worker thread, never on the loop,
and never on two threads at once (a pygit2 repository is not thread-safe).
"""

from __future__ import annotations

import enum
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from .errors import NotInRepository, RepositoryConfigError, RevisionNotFound

__all__ = ["BackendKind", "Revision", "RepoFile", "Backend", "FilesystemBackend",
           "GitBackend", "FILESYSTEM_REV", "blob_id", "relative_path"]

#: The revision of a filesystem repository: it has none (ARTIQ's value).
FILESYSTEM_REV = "N/A"


class BackendKind(enum.Enum):
    FILESYSTEM = "filesystem"
    GIT = "git"


@dataclass(frozen=True)
class Revision:
    """A resolved revision: its commit hash (``N/A`` for a directory) and message."""

    rev: str
    message: str | None


@dataclass(frozen=True)
class RepoFile:
    """An experiment file: its path from the repository root (``/``-separated) and its
    content hash; ``error`` when it cannot be read."""

    path: str
    blob: str
    error: str | None = None


def blob_id(data: bytes) -> str:
    """Git's blob id of ``data``: the same file has the same id in both backends."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def relative_path(path: str) -> str:
    """``path`` as a clean relative ``/`` path inside a repository, or
    NotInRepository for an absolute path or one that climbs out with ``..``."""
    pure = PurePosixPath(path.replace(os.sep, "/"))
    parts = [part for part in pure.parts if part not in ("", ".")]
    if pure.is_absolute() or ".." in parts or not parts:
        raise NotInRepository(f"{path!r} is not a path inside the repository")
    return "/".join(parts)


def _wanted(name: str) -> bool:
    return not name.startswith(".")


class Backend(Protocol):
    kind: BackendKind
    #: The repository's location, for messages and ``root()``.
    root: str

    def resolve(self, rev: str | None) -> Revision: ...

    def files(self, rev: str, subdir: str) -> list[RepoFile]: ...

    def has_file(self, rev: str, path: str) -> bool: ...

    def write_tree(self, rev: str, directory: Path) -> None: ...


class FilesystemBackend:
    """A plain directory: one revision, ``N/A``; runs use the directory itself."""

    kind = BackendKind.FILESYSTEM

    def __init__(self, root: str | os.PathLike[str]):
        self.root = str(Path(root).absolute())

    def resolve(self, rev: str | None) -> Revision:
        return Revision(FILESYSTEM_REV, None)

    def files(self, rev: str, subdir: str) -> list[RepoFile]:
        start = Path(self.root, subdir) if subdir else Path(self.root)
        found: list[RepoFile] = []
        self._walk(start, PurePosixPath(subdir) if subdir else PurePosixPath(), found,
                   set())
        return found

    def _walk(self, directory: Path, relative: PurePosixPath, found: list[RepoFile],
              seen: set[str]) -> None:
        real = os.path.realpath(directory)
        if real in seen:  # a symbolic link loop
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return  # a missing repository or subfolder holds no experiment
        for entry in entries:
            if not _wanted(entry.name):
                continue
            path = str(relative / entry.name)
            if entry.is_dir():
                self._walk(Path(entry.path), relative / entry.name, found, seen)
            elif entry.name.endswith(".py"):
                try:
                    found.append(RepoFile(path, blob_id(Path(entry.path).read_bytes())))
                except OSError as exc:
                    found.append(RepoFile(path, "", f"cannot read: {exc.strerror}"))

    def has_file(self, rev: str, path: str) -> bool:
        return Path(self.root, relative_path(path)).is_file()

    def write_tree(self, rev: str, directory: Path) -> None:
        raise NotImplementedError("a filesystem repository is used in place")


class GitBackend:
    """The commits of a Git repository; HEAD is the current revision."""

    kind = BackendKind.GIT

    def __init__(self, root: str | os.PathLike[str]):
        try:
            import pygit2  # only the Git backend needs it: imported when used
        except ImportError:
            raise RepositoryConfigError("the Git backend (-g) needs pygit2, which "
                                        "artiq_bus installs: pip install pygit2") from None

        self._pygit2 = pygit2
        self.root = str(Path(root).absolute())
        try:
            self._repo = pygit2.Repository(self.root)
        except pygit2.GitError as exc:
            raise RepositoryConfigError(f"{self.root} is not a Git repository ({exc}); "
                                        "create it with 'git init --bare'") from None
        if self._repo.head_is_unborn:
            raise RepositoryConfigError(self._unborn_message())

    def _unborn_message(self) -> str:
        branches = list(self._repo.branches.local)
        head = self._repo.references["HEAD"].target
        if not branches:
            return (f"the Git repository {self.root} has no commit yet: push at least "
                    "one commit into it before starting the master")
        return (f"HEAD of the Git repository {self.root} is {head}, which has no commit "
                f"(branches: {', '.join(branches)}); point HEAD at one: git "
                f"--git-dir={self.root} symbolic-ref HEAD refs/heads/{branches[0]}")

    def _commit(self, rev: str) -> Any:
        try:
            return self._repo.revparse_single(rev).peel(self._pygit2.Commit)
        except (KeyError, ValueError, self._pygit2.GitError,
                self._pygit2.InvalidSpecError):
            raise RevisionNotFound(f"unknown revision {rev!r} in {self.root}") from None

    def resolve(self, rev: str | None) -> Revision:
        if rev is None and self._repo.head_is_unborn:
            raise RevisionNotFound(self._unborn_message())
        commit = self._commit("HEAD" if rev is None else rev)
        return Revision(str(commit.id), commit.message.strip())

    def files(self, rev: str, subdir: str) -> list[RepoFile]:
        tree = self._commit(rev).tree
        if subdir:
            try:
                tree = tree[relative_path(subdir)]
            except (KeyError, NotInRepository):
                return []
            if not isinstance(tree, self._pygit2.Tree):
                return []
        found: list[RepoFile] = []
        self._walk(tree, PurePosixPath(subdir) if subdir else PurePosixPath(), found)
        return found

    def _walk(self, tree: Any, relative: PurePosixPath, found: list[RepoFile]) -> None:
        for entry in sorted(tree, key=lambda e: e.name):
            if not _wanted(entry.name):
                continue
            if entry.type_str == "tree":
                self._walk(self._repo[entry.id], relative / entry.name, found)
            elif (entry.type_str == "blob" and entry.name.endswith(".py")
                  and entry.filemode != self._pygit2.GIT_FILEMODE_LINK):
                found.append(RepoFile(str(relative / entry.name), str(entry.id)))

    def has_file(self, rev: str, path: str) -> bool:
        try:
            entry = self._commit(rev).tree[relative_path(path)]
        except KeyError:
            return False
        return entry.type_str == "blob"

    def write_tree(self, rev: str, directory: Path) -> None:
        """Write every file of the commit ``rev`` into ``directory`` (which exists)."""
        self._write(self._commit(rev).tree, directory)

    def _write(self, tree: Any, directory: Path) -> None:
        for entry in tree:
            target = directory / entry.name
            if entry.type_str == "tree":
                target.mkdir()
                self._write(self._repo[entry.id], target)
            elif entry.type_str != "blob":
                continue  # a submodule: a commit of another repository
            elif entry.filemode == self._pygit2.GIT_FILEMODE_LINK:
                os.symlink(self._repo[entry.id].read_raw(), target)
            else:
                target.write_bytes(self._repo[entry.id].read_raw())
                if entry.filemode == self._pygit2.GIT_FILEMODE_BLOB_EXECUTABLE:
                    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP
                                 | stat.S_IXOTH)

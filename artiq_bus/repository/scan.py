"""One repository scan: which files to examine, the cache of what examining gave, and
the explorer's list (``explist``) built from the outcomes with ARTIQ's rules.

Each file's outcome is cached by its content hash (the Git blob id) and those of the
modules beside it that it imported (a shared module that sets argument defaults
changes what the file offers), so an unchanged file is never examined again and a
rescan where nothing changed costs a listing.  A failure is cached only for the same
commit: a new commit may fix a module the file imports, so its broken files are
examined again (a filesystem repository has no commits: its broken files are
examined at every scan).

Names (ARTIQ's): the docstring's first line without a final ``.``, else the class
name; ``/`` becomes ``_``; a name already taken in the same folder becomes ``name1``,
``name2``, …; experiments in subfolders are named ``folder/name``.  The ``file`` of an
entry is its path from the repository root (``--experiment-subdir`` included).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from .backends import FILESYSTEM_REV, RepoFile
from .examiners import Outcome

__all__ = ["BlobOf", "OutcomeCache", "ScanResult", "build_explist", "describe_error"]

logger = logging.getLogger(__name__)

#: Outcomes kept (a large repository's worth, with history).
_CACHE_SIZE = 20_000


#: The current blob id of a module a file uses (its path relative to the file's
#: folder), None when the listing has no such file.
BlobOf = Callable[[str], "str | None"]


@dataclass
class _Cached:
    outcome: Outcome
    #: the modules beside the file that examining it imported, and their blob ids then
    uses: dict[str, str]


class OutcomeCache:
    """Examine outcomes by content hash (failures by content hash and commit), valid
    while the modules the file imported from beside it are unchanged too."""

    def __init__(self, size: int = _CACHE_SIZE):
        self._size = size
        self._entries: collections.OrderedDict[tuple[str, str], _Cached] = \
            collections.OrderedDict()

    @staticmethod
    def _keys(blob: str, rev: str) -> tuple[tuple[str, str], tuple[str, str] | None]:
        return (blob, ""), (None if rev == FILESYSTEM_REV else (blob, rev))

    def get(self, blob: str, rev: str, blob_of: BlobOf = lambda path: None) -> Outcome | None:
        for key in self._keys(blob, rev):
            cached = self._entries.get(key) if key is not None else None
            if cached is not None and all(blob_of(path) == used
                                          for path, used in cached.uses.items()):
                self._entries.move_to_end(key)  # type: ignore[arg-type]
                return cached.outcome
        return None

    def put(self, blob: str, rev: str, outcome: Outcome,
            blob_of: BlobOf = lambda path: None) -> None:
        success, failure = self._keys(blob, rev)
        key = success if "error" not in outcome else failure
        uses = {path: blob_of(path) for path in outcome.get("uses", ())}
        if key is None or None in uses.values():
            return  # a failure without commit, or a module we cannot watch for changes
        self._entries[key] = _Cached(outcome, uses)  # type: ignore[arg-type]
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


@dataclass
class ScanResult:
    """What a scan publishes."""

    explist: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: path → {"line", "message"} for each file that could not be examined
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    examined: int = 0


def describe_error(path: str, error: dict[str, Any]) -> str:
    """``file.py, line 3: SyntaxError: invalid syntax`` (no line when unknown)."""
    line = error.get("line")
    where = f"{path}, line {line}" if line else path
    return f"{where}: {error.get('message')}"


def _entry_name(name: str, class_name: str, path: str, taken: dict[str, Any]) -> str:
    if "/" in name:
        logger.warning("repository: '/' is not allowed in experiment names (%s in %s)",
                       name, path)
        name = name.replace("/", "_")
    if name in taken:
        base, number = name, 1
        while name in taken:
            name = f"{base}{number}"
            number += 1
        logger.warning("repository: duplicate experiment name '%s': class '%s' in '%s' "
                       "is listed as '%s'", base, class_name, path, name)
    return name


def _folder_entries(folder: PurePosixPath, tree: dict[PurePosixPath, list[str]],
                    outcomes: dict[str, Outcome]) -> dict[str, dict[str, Any]]:
    """The entries of one folder and, prefixed with their folder's name, its
    subfolders' (names are unique within a folder)."""
    entries: dict[str, dict[str, Any]] = {}
    for item in sorted(tree.get(folder, [])):
        child = folder / item
        if child in tree:
            sub = _folder_entries(child, tree, outcomes)
            entries.update({f"{item}/{name}": entry for name, entry in sub.items()})
            continue
        classes = outcomes.get(str(child), {}).get("classes") or {}
        for class_name, description in classes.items():
            name = _entry_name(description["name"], class_name, str(child), entries)
            entries[name] = {"file": str(child), "class_name": class_name,
                             "arginfo": description["arginfo"],
                             "argument_ui": description.get("argument_ui"),
                             "scheduler_defaults": description["scheduler_defaults"]}
    return entries


def build_explist(files: list[RepoFile], outcomes: dict[str, Outcome],
                  subdir: str) -> ScanResult:
    """The explorer's list and the errors, from each file's outcome (by path)."""
    root = PurePosixPath(subdir) if subdir else PurePosixPath()
    tree: dict[PurePosixPath, list[str]] = {root: []}
    for repo_file in files:
        path = PurePosixPath(repo_file.path)
        for parent in [path, *path.parents]:
            if parent == root or parent == PurePosixPath():
                break
            items = tree.setdefault(parent.parent, [])
            if parent.name not in items:
                items.append(parent.name)
            if parent != path:
                tree.setdefault(parent, [])
    result = ScanResult(explist=_folder_entries(root, tree, outcomes))
    for repo_file in files:
        error = outcomes.get(repo_file.path, {}).get("error")
        if error is not None:
            result.errors[repo_file.path] = error
    return result

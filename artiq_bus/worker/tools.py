"""Loading experiment and device-database files, and finding experiments in them.

``file_import`` loads any Python file (whatever its extension) as module
``<prefix><stem>``, with the file's directory on ``sys.path`` while it executes, so the
file can import modules that sit beside it.  Those sibling modules stay in
``sys.modules`` (a run's later ``import sibling`` still works); code that loads many
files into one process wraps the import in :func:`forget_new_modules`, which removes
the modules imported meanwhile from that directory, so that the next file gets its own
siblings.  Modules from elsewhere (numpy, the standard library) stay: extension modules
cannot be loaded twice in one process.

The file and its siblings are compiled from source, never from ``__pycache__``: a
bytecode file is trusted when the source's mtime (whole seconds) and size match, so a
file rewritten within the same second at the same size would otherwise run stale code.
In workers, compiled code is shared through :mod:`.code_cache`, keyed by the source's
content.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from ..language.environment import is_experiment, is_public_experiment
from .code_cache import cached_code

__all__ = ["file_import", "forget_new_modules", "get_experiment"]

logger = logging.getLogger(__name__)


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compiles from the source every time (or takes the code compiled from this very
    source, see :mod:`.code_cache`): ``__pycache__`` is neither read nor written."""

    def get_code(self, fullname: str) -> Any:
        path = self.get_filename(fullname)
        return cached_code(self.get_data(path), path, self.source_to_code)


@contextlib.contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    """``directory`` first on ``sys.path``, its modules loaded from source only."""
    previous = sys.path_importer_cache.get(directory)
    sys.path_importer_cache[directory] = importlib.machinery.FileFinder(
        directory,
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        (_SourceOnlyLoader, importlib.machinery.SOURCE_SUFFIXES))
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(directory)
        if previous is None:
            sys.path_importer_cache.pop(directory, None)
        else:
            sys.path_importer_cache[directory] = previous


def file_import(filename: str | os.PathLike[str], prefix: str = "file_import_") -> ModuleType:
    """Execute the Python file ``filename`` as module ``prefix + <file stem>``.

    The module is in ``sys.modules`` while it executes (``inspect`` and pickling need
    that) and stays there; if executing it fails it is removed again.
    """
    path = Path(filename).resolve()
    name = prefix + path.stem
    loader = _SourceOnlyLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None  # a loader was given, so a spec is always made
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_sys_path(str(path.parent)):
            loader.exec_module(module)
    except BaseException:
        if sys.modules.get(name) is module:
            del sys.modules[name]
        raise
    logger.debug("imported %s as %s", path, name)
    return module


def _file_inside(module: ModuleType | None, directory: Path) -> Path | None:
    """The file of ``module`` if it lies in ``directory``."""
    filename = getattr(module, "__file__", None)
    if not filename:
        return None
    path = Path(filename).resolve()
    return path if path.is_relative_to(directory) else None


@contextlib.contextmanager
def forget_new_modules(directory: str | os.PathLike[str]) -> Iterator[list[Path]]:
    """On exit, remove from ``sys.modules`` the modules imported inside the block
    whose files lie in ``directory`` (the loaded file and its siblings).  The list the
    block gets then holds those modules' files (what the block depended on)."""
    root = Path(directory).resolve()
    before = set(sys.modules)
    forgotten: list[Path] = []
    try:
        yield forgotten
    finally:
        for name in set(sys.modules) - before:
            path = _file_inside(sys.modules.get(name), root)
            if path is not None:
                forgotten.append(path)
                del sys.modules[name]


def _resolve_dotted(module: ModuleType, class_name: str) -> Any:
    target: Any = module
    for part in class_name.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AttributeError(f"no experiment {class_name!r} in module "
                                 f"{module.__name__!r}") from None
    return target


def get_experiment(module: ModuleType, class_name: str | None = None) -> type[Any]:
    """The experiment class ``class_name`` of ``module`` (dotted names reach nested
    classes: ``"Outer.Exp"``), or, without a name, its only public experiment.

    Without a name, every public experiment class in the module's namespace counts,
    including imported ones; none or several raise ValueError.
    """
    if class_name:
        cls = _resolve_dotted(module, class_name)
        if not is_experiment(cls):
            raise ValueError(f"{class_name!r} is not an experiment class")
        return cls  # type: ignore[no-any-return]
    found: dict[int, tuple[str, type[Any]]] = {}
    for name, value in vars(module).items():
        if is_public_experiment(value):
            found.setdefault(id(value), (name, value))
    if not found:
        raise ValueError("No experiments in module")
    if len(found) > 1:
        names = ", ".join(sorted(name for name, _ in found.values()))
        raise ValueError(f"More than one experiment found in module: {names}")
    return next(iter(found.values()))[1]

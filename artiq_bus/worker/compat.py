"""Let experiment files written for ARTIQ run unchanged: ``import artiq`` → artiq_bus.

:func:`install_artiq_compat` adds an import hook that answers for ``artiq``,
``artiq.experiment``, ``artiq.language`` and ``artiq.language.<units|core|environment|
scan|types>`` with modules that carry the names of the matching artiq_bus modules (the
same objects: ``artiq.experiment.EnvExperiment is artiq_bus.experiment.EnvExperiment``).
Any other ``artiq.*`` name is not found, as usual.

The hook is installed only when no real ``artiq`` package can be imported, and only on
request (the worker and ``artiq_run`` ask): importing artiq_bus never installs it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

import artiq_bus

__all__ = ["ALIASES", "ArtiqCompatFinder", "install_artiq_compat", "uninstall_artiq_compat"]

logger = logging.getLogger(__name__)

#: ARTIQ module name → the artiq_bus module whose names it carries.
ALIASES: dict[str, str] = {
    "artiq": "artiq_bus",
    "artiq.experiment": "artiq_bus.experiment",
    "artiq.language": "artiq_bus.language",
    "artiq.language.units": "artiq_bus.language.units",
    "artiq.language.core": "artiq_bus.language.core",
    "artiq.language.environment": "artiq_bus.language.environment",
    "artiq.language.scan": "artiq_bus.language.scan",
    "artiq.language.types": "artiq_bus.language.types",
}
_PACKAGES = frozenset({"artiq", "artiq.language"})


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class _AliasLoader(importlib.abc.Loader):
    """Fills a fresh module with the names of the artiq_bus module it stands for."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default: a new, empty module

    def exec_module(self, module: ModuleType) -> None:
        target = importlib.import_module(self.target)
        for name, value in vars(target).items():
            if not _is_dunder(name) and not isinstance(value, ModuleType):
                setattr(module, name, value)
        module.__doc__ = f"ARTIQ compatibility alias of {self.target}."
        if hasattr(target, "__all__"):
            setattr(module, "__all__", list(getattr(target, "__all__")))
        if self.target == "artiq_bus":
            setattr(module, "__version__", artiq_bus.__version__)


class ArtiqCompatFinder(importlib.abc.MetaPathFinder):
    """Finds the ``artiq`` names of :data:`ALIASES` (and nothing else)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in ALIASES:
            return None
        return importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(ALIASES[fullname]), is_package=fullname in _PACKAGES)


def _installed() -> ArtiqCompatFinder | None:
    for finder in sys.meta_path:
        if isinstance(finder, ArtiqCompatFinder):
            return finder
    return None


def install_artiq_compat() -> bool:
    """Make ``import artiq...`` reach artiq_bus, unless a real ARTIQ is importable.

    Returns whether the hook is in place (True also when it already was).
    """
    if _installed() is not None:
        return True
    if importlib.util.find_spec("artiq") is not None:
        logger.debug("a real artiq package is importable: no compatibility hook")
        return False
    sys.meta_path.append(ArtiqCompatFinder())
    logger.debug("artiq compatibility hook installed")
    return True


def uninstall_artiq_compat() -> None:
    """Remove the hook and forget the alias modules it created."""
    finder = _installed()
    if finder is None:
        return
    sys.meta_path.remove(finder)
    for name in ALIASES:
        module = sys.modules.get(name)
        if module is not None and isinstance(module.__spec__.loader if module.__spec__
                                              else None, _AliasLoader):
            del sys.modules[name]

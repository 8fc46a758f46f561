"""Experiments and their environment: arguments, devices, datasets, children.

A top-level experiment is constructed with the managers tuple
``(device_mgr, dataset_mgr, argument_mgr, scheduler_defaults)``; a child
``HasEnvironment`` is constructed with its parent and shares the parent's managers.
The constructor calls ``build()``; arguments and default scheduling options may only
be declared there.  The master then calls ``prepare()``, ``run()`` and ``analyze()``.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .core import rpc
from .errors import CancelledArgsError, DefaultMissing, ManagerMissing
from .processors import (ArgProcessor, BooleanValue, EnumerationValue, NoDefault,
                         NumberValue, PYONValue, Scannable, StringValue)

if TYPE_CHECKING:
    from ..worker.interfaces import (ArgDesc, ArgumentManagerProtocol,
                                     DatasetManagerProtocol, DeviceManagerProtocol)

__all__ = ["HasEnvironment", "Experiment", "EnvExperiment", "is_experiment",
           "is_public_experiment", "NoDefault", "DefaultMissing", "PYONValue",
           "BooleanValue", "EnumerationValue", "NumberValue", "StringValue", "Scannable"]

logger = logging.getLogger(__name__)

_MANAGER_COUNT = 4


def _build_only(what: str) -> TypeError:
    return TypeError(f"{what} should only be called from build()")


class HasEnvironment:
    """An object with access to arguments, devices and datasets."""

    kernel_invariants: set[str]

    def __init__(self, managers_or_parent: Any, *args: Any, **kwargs: Any) -> None:
        self.children: list[HasEnvironment] = []
        if isinstance(managers_or_parent, tuple):
            self.__take_managers(managers_or_parent)
        elif isinstance(managers_or_parent, HasEnvironment):
            self.__take_parent(managers_or_parent)
        else:
            raise TypeError("HasEnvironment needs the managers tuple or a parent "
                            f"HasEnvironment, got {type(managers_or_parent).__name__}")
        self.__in_build = True
        try:
            self.build(*args, **kwargs)
        finally:
            self.__in_build = False

    def __take_managers(self, managers: tuple[Any, ...]) -> None:
        if len(managers) != _MANAGER_COUNT:
            raise TypeError("the managers tuple is (device_mgr, dataset_mgr, "
                            "argument_mgr, scheduler_defaults)")
        (self.__device_mgr, self.__dataset_mgr, self.__argument_mgr,
         self.__scheduler_defaults) = managers

    def __take_parent(self, parent: HasEnvironment) -> None:
        parent.register_child(self)
        self.__device_mgr = parent.__device_mgr
        self.__dataset_mgr = parent.__dataset_mgr
        self.__argument_mgr = parent.__argument_mgr
        self.__scheduler_defaults = {}

    def register_child(self, child: HasEnvironment) -> None:
        """Record ``child`` (done by the child's constructor)."""
        self.children.append(child)

    def call_child_method(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Call ``method`` on every child that has it, in registration order."""
        for child in self.children:
            function = getattr(child, method, None)
            if function is not None:
                function(*args, **kwargs)

    def build(self) -> None:
        """Declare arguments and devices (override; called by the constructor)."""

    def __add_invariant(self, key: str) -> None:
        # a new set per instance: never grow a set shared with the class
        self.kernel_invariants = getattr(self, "kernel_invariants", set()) | {key}

    # --- arguments ------------------------------------------------------------------

    def __arguments(self) -> ArgumentManagerProtocol:
        if self.__argument_mgr is None:
            raise ManagerMissing("this experiment was built without an argument manager")
        return self.__argument_mgr  # type: ignore[no-any-return]

    def get_argument(self, key: str, processor: ArgProcessor, group: str | None = None,
                     tooltip: str | None = None) -> Any:
        """The value of argument ``key``, declared with ``processor`` (build only)."""
        if not self.__in_build:
            raise _build_only("get_argument()")
        return self.__arguments().get(key, _checked(processor), group, tooltip)

    def setattr_argument(self, key: str, processor: ArgProcessor | None = None,
                         group: str | None = None, tooltip: str | None = None) -> None:
        """Set attribute ``key`` to the argument's value (build only)."""
        if not self.__in_build:
            raise _build_only("setattr_argument()")
        setattr(self, key, self.get_argument(key, _checked(processor), group, tooltip))
        self.__add_invariant(key)

    @contextlib.contextmanager
    def interactive(self, title: str = "") -> Iterator[types.SimpleNamespace]:
        """Request arguments while running.

        Declare them with ``ns.setattr_argument(key, processor, group, tooltip)`` inside
        the ``with`` block; when the block ends the request is sent and the call waits
        for a user.  The values are then attributes of ``ns``.  A cancelled request
        raises :class:`CancelledArgsError`.
        """
        requested: dict[str, tuple[ArgProcessor, str | None, str | None]] = {}

        def setattr_argument(key: str, processor: ArgProcessor | None = None,
                             group: str | None = None, tooltip: str | None = None) -> None:
            if key in requested:
                raise ValueError(f"interactive argument {key!r} requested twice")
            requested[key] = (_checked(processor), group, tooltip)

        namespace = types.SimpleNamespace(setattr_argument=setattr_argument)
        yield namespace
        del namespace.setattr_argument
        for key, value in self.__ask(requested, title).items():
            setattr(namespace, key, value)

    def __ask(self, requested: dict[str, tuple[ArgProcessor, str | None, str | None]],
              title: str) -> dict[str, Any]:
        arglist: list[ArgDesc] = [(key, processor.describe(), group, tooltip)
                                  for key, (processor, group, tooltip) in requested.items()]
        supplied = self.__arguments().get_interactive(arglist, title)
        if supplied is None:
            raise CancelledArgsError(f"interactive arguments {title!r} were cancelled")
        if set(supplied) != set(requested):
            raise ValueError(f"interactive arguments supplied for {sorted(supplied)}, "
                             f"requested {sorted(requested)}")
        return {key: requested[key][0].process(supplied[key]) for key in requested}

    def set_default_scheduling(self, priority: int | None = None,
                               pipeline_name: str | None = None,
                               flush: bool | None = None) -> None:
        """Default submission options shown by the dashboard (build only)."""
        if not self.__in_build:
            raise _build_only("set_default_scheduling()")
        if priority is not None:
            self.__scheduler_defaults["priority"] = int(priority)
        if pipeline_name is not None:
            self.__scheduler_defaults["pipeline_name"] = pipeline_name
        if flush is not None:
            self.__scheduler_defaults["flush"] = bool(flush)

    # --- devices --------------------------------------------------------------------

    def __devices(self) -> DeviceManagerProtocol:
        if self.__device_mgr is None:
            raise ManagerMissing("this experiment was built without a device manager")
        return self.__device_mgr  # type: ignore[no-any-return]

    def get_device_db(self) -> dict[str, Any]:
        """The whole device database."""
        return self.__devices().get_device_db()

    def get_device(self, key: str) -> Any:
        """The device ``key`` (virtual devices such as ``scheduler`` included)."""
        return self.__devices().get(key)

    def setattr_device(self, key: str) -> None:
        """Set attribute ``key`` to the device ``key``."""
        setattr(self, key, self.get_device(key))
        self.__add_invariant(key)

    # --- datasets -------------------------------------------------------------------

    def __datasets(self) -> DatasetManagerProtocol:
        if self.__dataset_mgr is None:
            raise ManagerMissing("this experiment was built without a dataset manager")
        return self.__dataset_mgr  # type: ignore[no-any-return]

    @rpc(flags={"async"})
    def set_dataset(self, key: str, value: Any, *, unit: str | None = None,
                    scale: float | None = None, precision: int | None = None,
                    broadcast: bool = False, persist: bool = False,
                    archive: bool = True) -> None:
        """Create or replace dataset ``key``.

        ``broadcast`` shares it with the master live; ``persist`` (implies broadcast)
        keeps it in the master across restarts; ``archive`` stores it in the results
        file.  ``unit``/``scale``/``precision`` are display metadata.
        """
        metadata = {name: item for name, item in
                    (("unit", unit), ("scale", scale), ("precision", precision))
                    if item is not None}
        self.__datasets().set(key, value, metadata, broadcast, persist, archive)

    @rpc(flags={"async"})
    def mutate_dataset(self, key: str, index: Any, value: Any) -> None:
        """Set ``dataset[index] = value``; a tuple index is a slice, a tuple of tuples
        a multi-dimensional slice."""
        self.__datasets().mutate(key, index, value)

    @rpc(flags={"async"})
    def append_to_dataset(self, key: str, value: Any) -> None:
        """Append ``value`` to list dataset ``key``."""
        self.__datasets().append_to(key, value)

    def get_dataset(self, key: str, default: Any = NoDefault, archive: bool = True) -> Any:
        """Dataset ``key``: this run's own first, else the master's (archived in the
        results file when ``archive``); ``default`` if given and there is none."""
        try:
            return self.__datasets().get(key, archive)
        except KeyError:
            if default is NoDefault:
                raise
            return default

    def get_dataset_metadata(self, key: str, default: Any = NoDefault) -> dict[str, Any]:
        """Metadata of dataset ``key`` (``default`` if given and there is none)."""
        try:
            return self.__datasets().get_metadata(key)
        except KeyError:
            if default is NoDefault:
                raise
            return default  # type: ignore[no-any-return]

    def setattr_dataset(self, key: str, default: Any = NoDefault,
                        archive: bool = True) -> None:
        """Set attribute ``key`` to dataset ``key``."""
        setattr(self, key, self.get_dataset(key, default, archive))


def _checked(processor: ArgProcessor | None) -> ArgProcessor:
    if processor is None:
        raise TypeError("an argument needs a processor, e.g. NumberValue()")
    return processor


class Experiment:
    """The stages the master runs: ``prepare``, ``run``, ``analyze``."""

    def prepare(self) -> None:
        """Precompute before the run (may overlap another experiment's run)."""

    def run(self) -> None:
        """The experiment itself; must be overridden."""
        raise NotImplementedError

    def analyze(self) -> None:
        """Post-process results after the run (may overlap the next run)."""


class EnvExperiment(Experiment, HasEnvironment):
    """The usual base class: an experiment with an environment."""

    def prepare(self) -> None:
        """Call ``prepare`` of every child."""
        self.call_child_method("prepare")


def is_experiment(obj: object) -> bool:
    """Whether ``obj`` is an experiment class (the two base classes excluded)."""
    return (isinstance(obj, type) and issubclass(obj, Experiment)
            and obj is not Experiment and obj is not EnvExperiment)


def is_public_experiment(obj: object) -> bool:
    """Whether ``obj`` is an experiment class whose name does not start with ``_``."""
    return is_experiment(obj) and not obj.__name__.startswith("_")  # type: ignore[attr-defined]

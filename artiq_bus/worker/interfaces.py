"""What an experiment's ``HasEnvironment`` needs from the process that runs it.

A top-level experiment is built with the tuple
``(device_mgr, dataset_mgr, argument_mgr, scheduler_defaults)``.  The three managers
satisfy the protocols below; the local implementations (``artiq_run``, tests, repository
examination) live beside this module, and bus-backed ones talk to the master's nodes.
Any of the three may be ``None`` where a tool has no use for it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:
    from ..language.processors import ArgProcessor

__all__ = ["ArgDesc", "ArgumentManagerProtocol", "DeviceManagerProtocol",
           "DatasetManagerProtocol", "Managers"]

logger = logging.getLogger(__name__)

#: One interactive argument as sent to the master: (key, procdesc, group, tooltip).
ArgDesc = tuple[str, dict[str, Any], Optional[str], Optional[str]]


class ArgumentManagerProtocol(Protocol):
    """Supplies argument values to ``get_argument`` and interactive requests."""

    def get(self, key: str, processor: ArgProcessor, group: str | None,
            tooltip: str | None) -> Any:
        """The processed value of argument ``key`` (or its default)."""
        ...

    def get_interactive(self, arglist_desc: list[ArgDesc],
                        title: str) -> dict[str, Any] | None:
        """Ask a user for the described arguments and wait: raw (unprocessed) values
        by key, or ``None`` when the request was cancelled."""
        ...


class DeviceManagerProtocol(Protocol):
    """Supplies devices to ``get_device`` / ``setattr_device``."""

    def get_device_db(self) -> dict[str, Any]:
        """The whole device database."""
        ...

    def get(self, name: str) -> Any:
        """The device called ``name`` (KeyError when there is none)."""
        ...


class DatasetManagerProtocol(Protocol):
    """Stores and reads datasets for ``set_dataset`` and friends."""

    def set(self, key: str, value: Any, metadata: dict[str, Any], broadcast: bool,
            persist: bool, archive: bool) -> None:
        """Create or replace a dataset."""
        ...

    def mutate(self, key: str, index: Any, value: Any) -> None:
        """Set one element or slice of a dataset."""
        ...

    def append_to(self, key: str, value: Any) -> None:
        """Append to a list dataset."""
        ...

    def get(self, key: str, archive: bool = False) -> Any:
        """A dataset's value (KeyError when there is none)."""
        ...

    def get_metadata(self, key: str) -> dict[str, Any]:
        """A dataset's metadata (KeyError when there is none)."""
        ...


#: What a top-level experiment is constructed with.
Managers = tuple[Optional[DeviceManagerProtocol], Optional[DatasetManagerProtocol],
                 Optional[ArgumentManagerProtocol], dict[str, Any]]

"""The two local argument managers.

* :class:`ProcessArgumentManager` runs an experiment: it processes the values supplied
  in ``expid["arguments"]`` (or takes the processors' defaults) and afterwards checks
  that no supplied value went unqueried.
* :class:`TraceArgumentManager` examines an experiment for the explorer: it records
  what each argument looks like (``procdesc``, group, tooltip) and gives ``None`` for
  every value, ignoring defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..language.errors import DefaultMissing
from ..language.processors import ArgProcessor
from .errors import InteractiveUnavailable
from .interfaces import ArgDesc

__all__ = ["InteractiveHandler", "ProcessArgumentManager", "TraceArgumentManager"]

logger = logging.getLogger(__name__)

#: Asks a user for interactive arguments: raw values by key, or None when cancelled.
InteractiveHandler = Callable[[list[ArgDesc], str], "dict[str, Any] | None"]


def _no_user(arglist_desc: list[ArgDesc], title: str) -> dict[str, Any] | None:
    raise InteractiveUnavailable(f"no one can be asked for interactive arguments "
                                 f"{title!r} here")


class ProcessArgumentManager:
    """Values for a run, from the supplied (unprocessed) arguments.

    ``interactive`` answers ``self.interactive()`` requests (``artiq_run`` prompts on
    the terminal); without one such requests raise :class:`InteractiveUnavailable`.
    """

    def __init__(self, unprocessed: Mapping[str, Any],
                 interactive: InteractiveHandler | None = None) -> None:
        self.unprocessed = dict(unprocessed)
        self._queried: set[str] = set()
        self._interactive = interactive or _no_user

    def get(self, key: str, processor: ArgProcessor, group: str | None = None,
            tooltip: str | None = None) -> Any:
        """``processor.process(supplied value)``, else ``processor.default()``."""
        self._queried.add(key)
        if key in self.unprocessed:
            return processor.process(self.unprocessed[key])
        try:
            return processor.default()
        except DefaultMissing:
            raise DefaultMissing(f"argument {key!r} was not supplied and has no "
                                 f"default") from None

    def check_unprocessed_arguments(self) -> None:
        """Raise AttributeError if an argument was supplied but never queried."""
        unqueried = sorted(set(self.unprocessed) - self._queried)
        if unqueried:
            raise AttributeError("Supplied argument(s) not queried in experiment: "
                                 + ", ".join(unqueried))

    def get_interactive(self, arglist_desc: list[ArgDesc],
                        title: str) -> dict[str, Any] | None:
        """Raw values from the interactive handler (None: cancelled)."""
        return self._interactive(arglist_desc, title)


class TraceArgumentManager:
    """Records every argument's description; every value is ``None``."""

    def __init__(self) -> None:
        #: key → (procdesc, group, tooltip), in the order the experiment asked.
        self.requested_args: dict[str, tuple[dict[str, Any], str | None, str | None]] = {}

    def get(self, key: str, processor: ArgProcessor, group: str | None = None,
            tooltip: str | None = None) -> None:
        """Record the argument; examination never has values."""
        self.requested_args[key] = (processor.describe(), group, tooltip)
        return None

    def get_interactive(self, arglist_desc: list[ArgDesc],
                        title: str) -> dict[str, Any] | None:
        """Interactive arguments are a run-time matter: examination has none."""
        return _no_user(arglist_desc, title)

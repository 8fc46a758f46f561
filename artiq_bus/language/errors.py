"""Exceptions of the experiment API.

::

    Exception
     ├── DefaultMissing         an argument was not supplied and has no default
     ├── TerminationRequested   the scheduler asked the run to stop (raised by pause())
     ├── CancelledArgsError     a user cancelled an interactive-argument request
     └── ManagerMissing         the experiment was built without the manager a call needs

The names are ARTIQ's, and they are re-exported where ARTIQ users import them from
(``artiq.language.core``, ``artiq.language.environment``).
"""

from __future__ import annotations

__all__ = ["DefaultMissing", "TerminationRequested", "CancelledArgsError", "ManagerMissing"]


class DefaultMissing(Exception):
    """An argument processor was asked for its default but was given none."""


class TerminationRequested(Exception):
    """Raised by ``scheduler.pause()`` when termination of the run was requested."""


class CancelledArgsError(Exception):
    """The interactive arguments requested by ``self.interactive()`` were cancelled."""


class ManagerMissing(Exception):
    """The experiment was built without the manager (devices, datasets or arguments)
    that a call needs, e.g. by a tool that only inspects experiments."""

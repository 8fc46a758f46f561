"""``artiq_client``'s device database command: ``scan-devices``.

The devices node reads its ``device_db.py`` again and publishes what changed, so
controller managers start, stop or restart the controllers whose entries changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .artiq_client import Session

__all__ = ["add_device_commands"]


def add_device_commands(commands: Any) -> None:
    """The ``scan-devices`` subcommand."""
    scan = commands.add_parser("scan-devices",
                               help="read the device database file again")
    scan.set_defaults(func=_action_scan_devices)


def _action_scan_devices(session: "Session") -> None:
    session.call("devices", "scan")

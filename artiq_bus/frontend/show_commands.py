"""``artiq_client show ...`` and the interactive-argument commands.

``show schedule|devices|datasets|interactive-args`` follow a replica of the master's
struct and redraw its table after each batch of updates (clearing the screen on a
terminal; on a pipe each table follows the last after a blank line), until Ctrl-C.
``show log|ccb`` print the stream as it comes (``log`` starts with the backlog).
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
import pprint
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..client.aio import AsyncClient
from ..client.replica import Replica
from ..client.subscriber import Subscriber
from ..protocol import stream_topic, unpack
from .common import VALUE_SYNTAX, parse_arguments, until_interrupted
from .dataset_commands import format_datasets
from .tables import format_table

if TYPE_CHECKING:
    from .artiq_client import Session

__all__ = ["View", "add_show_commands"]

logger = logging.getLogger(__name__)

#: Clears a terminal and puts the cursor top left.
CLEAR = "\x1b[2J\x1b[H"


class View(enum.Enum):
    """What ``show`` can show."""

    schedule = "schedule"
    log = "log"
    ccb = "ccb"
    devices = "devices"
    datasets = "datasets"
    interactive_args = "interactive-args"


# -- tables -------------------------------------------------------------------------------

def _when(epoch: float | None) -> str:
    return "" if epoch is None else time.strftime("%m/%d %H:%M:%S", time.localtime(epoch))


def format_schedule(schedule: dict[int, dict[str, Any]]) -> str:
    """ARTIQ's columns, most important run first."""
    def order(item: tuple[int, dict[str, Any]]) -> tuple[int, float, int]:
        rid, entry = item
        return -entry["priority"], entry["due_date"] or 0, rid
    rows = []
    for rid, entry in sorted(schedule.items(), key=order):
        expid = entry["expid"]
        rows.append((str(rid), entry["pipeline"], entry["status"], str(entry["priority"]),
                     _when(entry["due_date"]), expid.get("repo_rev") or "Outside repo.",
                     expid.get("file") or "<content>", expid.get("class_name") or ""))
    return format_table(("RID", "Pipeline", "Status", "Prio", "Due date", "Revision",
                         "File", "Class name"), rows)


def format_devices(devices: dict[str, Any]) -> str:
    rows = [(name, pprint.pformat(entry, width=80)) for name, entry in sorted(devices.items())]
    return format_table(("Name", "Description"), rows)


def format_interactive_args(requests: dict[int, dict[str, Any]]) -> str:
    rows = []
    for rid, request in sorted(requests.items()):
        for key, procdesc, group, tooltip in request["arglist_desc"]:
            rows.append((str(rid), request["title"], key, str(procdesc.get("ty", "")),
                         group or "", tooltip or ""))
    return format_table(("RID", "Title", "Key", "Type", "Group", "Tooltip"), rows)


#: View → (service, struct, table).
_STRUCTS: dict[View, tuple[str, str, Callable[[dict[Any, Any]], str]]] = {
    View.schedule: ("scheduler", "schedule", format_schedule),
    View.devices: ("devices", "devices", format_devices),
    View.datasets: ("datasets", "datasets", format_datasets),
    View.interactive_args: ("scheduler", "interactive_args", format_interactive_args),
}


# -- following ----------------------------------------------------------------------------

class _Screen:
    """Draws a table at most once per event-loop turn, however many updates came."""

    def __init__(self, render: Callable[[], str]):
        self._render = render
        self._due = False
        self._first = True
        self._terminal = sys.stdout.isatty()

    def changed(self, _update: Any = None) -> None:
        if not self._due:
            self._due = True
            asyncio.get_running_loop().call_soon(self.draw)

    def draw(self) -> None:
        self._due = False
        prefix = CLEAR if self._terminal else ("" if self._first else "\n")
        self._first = False
        print(prefix + self._render(), flush=True)


async def _follow_struct(session: Session, view: View) -> None:
    service, struct, table = _STRUCTS[view]
    address = session.full_address()
    client = AsyncClient(address, curve=session.curve)
    subscriber = Subscriber(address.notify, curve=session.curve)
    async with client:
        await subscriber.start()
        replica = Replica(client, subscriber, struct, service=service)
        screen = _Screen(lambda: table(replica.value))
        replica.add_listener(screen.changed)
        try:
            await replica.start()
            screen.draw()
            await until_interrupted()
        finally:
            await replica.stop()
            await subscriber.stop()


def format_log(record: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(record["time"]).strftime("%m/%d %H:%M:%S")
    level = logging.getLevelName(record["level"])
    return f"{level:<8} {record['source']:<24} {when} {record['message']}"


def format_ccb(item: dict[str, Any]) -> str:
    return f"{item['service']} args: {item['args']} kwargs: {item['kwargs']}"


async def _follow_stream(session: Session, name: str, line: Callable[[Any], str],
                         backlog_service: str | None = None) -> None:
    """Print stream ``name``, starting with its owner's backlog if it keeps one; items
    both in the backlog and in the stream are printed once (by sequence number)."""
    address = session.full_address()
    client = AsyncClient(address, curve=session.curve)
    subscriber = Subscriber(address.notify, curve=session.curve)
    last_seq = 0
    early: list[list[Any]] | None = [] if backlog_service else None

    def show(item: Any) -> None:
        try:
            print(line(item), flush=True)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            logger.warning("%s: an item not understood (%s): %r", name, exc, item)

    def on_items(frames: list[Any]) -> None:
        nonlocal last_seq
        if early is not None:
            early.append(frames)
            return
        try:
            _epoch, first, items = unpack(frames[2].buffer, frames[3:])
        except (ValueError, TypeError, IndexError) as exc:
            logger.warning("%s: a message not understood: %s", name, exc)
            return
        for offset, item in enumerate(items):
            if first + offset > last_seq:
                show(item)
        last_seq = max(last_seq, first + len(items) - 1)

    async with client:
        await subscriber.start()
        try:
            subscriber.subscribe(stream_topic(name), on_items)
            await subscriber.sync()
            if backlog_service is not None:
                backlog = await client.call(backlog_service, "backlog")
                for item in backlog["records"]:
                    show(item)
                last_seq, queued, early = backlog["seq"], early or [], None
                for frames in queued:
                    on_items(frames)
            await until_interrupted()
        finally:
            await subscriber.stop()


def _action_show(session: Session) -> None:
    session.info()  # a clear error at once when no master answers
    view = View(session.args.what)
    if view is View.log:
        asyncio.run(_follow_stream(session, "log", format_log, backlog_service="log"))
    elif view is View.ccb:
        asyncio.run(_follow_stream(session, "ccb", format_ccb))
    else:
        asyncio.run(_follow_struct(session, view))


# -- interactive arguments ------------------------------------------------------------

def _action_supply(session: Session) -> None:
    values, _ = parse_arguments(session.args.arguments)
    session.call("scheduler", "supply_interactive", session.args.rid, values)


def _action_cancel(session: Session) -> None:
    session.call("scheduler", "cancel_interactive", session.args.rid)


def add_show_commands(commands: Any) -> None:
    """``show``, ``supply-interactive`` and ``cancel-interactive``."""
    show = commands.add_parser(
        "show", help="show the master's state or follow a stream (Ctrl-C ends)")
    show.add_argument("what", choices=[view.value for view in View], help="what to show")
    show.set_defaults(func=_action_show)

    supply = commands.add_parser(
        "supply-interactive", help="answer a run waiting for interactive arguments",
        epilog=VALUE_SYNTAX)
    supply.add_argument("rid", metavar="RID", type=int, help="the run that asks")
    supply.add_argument("arguments", metavar="KEY=VALUE", nargs="*",
                        help="every argument the run asks for")
    supply.set_defaults(func=_action_supply)

    cancel = commands.add_parser(
        "cancel-interactive",
        help="refuse a run's interactive arguments (it gets CancelledArgsError)")
    cancel.add_argument("rid", metavar="RID", type=int, help="the run that asks")
    cancel.set_defaults(func=_action_cancel)

"""``artiq_client``: the command-line client of the master.

Global flags come before the subcommand.  Exit codes: :class:`~.common.ExitCode`.
Subcommands arrive with the services they use; each is one small ``_action_*`` function.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Any

from ..client.aio import AsyncClient
from ..client.subscriber import Subscriber
from ..client.sync import Client
from ..net import BusAddress
from ..net.errors import NetError
from ..protocol import (BusError, DeadlineExceeded, ProtocolError, RemoteError, Unavailable,
                        stream_topic, unpack)
from .common import (ExitCode, add_client_security, add_server, add_verbosity, add_version,
                     address_from_args, curve_client_from_args, fail)

__all__ = ["main", "build_parser"]

PROGRAM = "artiq_client"
#: How long the first contact with the master may take before we say nobody answers.
CONNECT_TIMEOUT_S = 3.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description="ARTIQ command-line client")
    add_version(parser)
    add_server(parser)
    add_client_security(parser)
    add_verbosity(parser)
    commands = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    terminate = commands.add_parser("terminate", help="stop the master")
    terminate.set_defaults(func=_action_terminate)

    show = commands.add_parser("show", help="show the master's state or follow a stream")
    show.add_argument("what", choices=["log"], help="what to show")
    show.set_defaults(func=_action_show)
    return parser


class Session:
    """A blocking connection to one master, checked at first use."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.address = address_from_args(args)
        self.curve = curve_client_from_args(args)
        self.client = Client(self.address, curve=self.curve)
        self._info: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        """The broker's ports; the first call tells whether a master answers at all."""
        if self._info is None:
            try:
                self._info = self.client.call("broker", "info", timeout_s=CONNECT_TIMEOUT_S)
            except DeadlineExceeded:
                raise Unavailable(f"no ARTIQ master answered at {self.address.control} "
                                  f"within {CONNECT_TIMEOUT_S:g} s") from None
        return self._info

    def call(self, service: str, method: str, *args: Any, **kwargs: Any) -> Any:
        self.info()
        return self.client.call(service, method, *args, **kwargs)

    def full_address(self) -> BusAddress:
        info = self.info()
        return self.address.with_ports(info["notify"], info["publish"])

    def close(self) -> None:
        self.client.close()


def _action_terminate(session: Session) -> None:
    session.call("master", "terminate")


def _format_log(record: dict[str, Any]) -> str:
    when = datetime.datetime.fromtimestamp(record["time"]).strftime("%m/%d %H:%M:%S")
    level = logging.getLevelName(record["level"])
    return f"{level:<8} {record['source']:<24} {when} {record['message']}"


async def _follow_log(session: Session) -> None:
    address = session.full_address()
    client = AsyncClient(address, curve=session.curve)
    subscriber = Subscriber(address.notify, curve=session.curve)
    last_seq = 0
    backlog_done = False
    early: list[list[Any]] = []

    def on_items(frames: list[Any]) -> None:
        nonlocal last_seq
        if not backlog_done:
            early.append(frames)
            return
        _epoch, first, items = unpack(frames[2].buffer, frames[3:])
        for offset, record in enumerate(items):
            if first + offset > last_seq:
                print(_format_log(record), flush=True)
        last_seq = max(last_seq, first + len(items) - 1)

    async with client:
        await subscriber.start()
        try:
            subscriber.subscribe(stream_topic("log"), on_items)
            await subscriber.sync()
            backlog = await client.call("log", "backlog")
            for record in backlog["records"]:
                print(_format_log(record), flush=True)
            last_seq, backlog_done = backlog["seq"], True
            for frames in early:
                on_items(frames)
            await asyncio.Event().wait()  # until Ctrl-C
        finally:
            await subscriber.stop()


def _action_show(session: Session) -> None:
    session.info()
    if session.args.what == "log":
        asyncio.run(_follow_log(session))


def _run(action: Callable[[Session], None], args: argparse.Namespace) -> None:
    session = Session(args)
    try:
        action(session)
    finally:
        session.close()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        _run(args.func, args)
    except KeyboardInterrupt:
        pass
    except Unavailable as exc:
        fail(PROGRAM, str(exc), ExitCode.UNAVAILABLE)
    except NetError as exc:
        fail(PROGRAM, str(exc), ExitCode.CONFIG)
    except RemoteError as exc:
        fail(PROGRAM, f"the master refused: {exc}", ExitCode.ERROR)
    except (BusError, ProtocolError) as exc:
        fail(PROGRAM, f"{type(exc).__name__}: {exc}", ExitCode.ERROR)


if __name__ == "__main__":
    main()

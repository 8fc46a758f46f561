"""``artiq_client``: the command-line client of the master.

Global flags come before the subcommand.  Exit codes: :class:`~.common.ExitCode`.
Subcommands arrive with the services they use; each is one small ``_action_*`` function.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dateutil.parser

from .. import pyon
from ..client.sync import Client
from ..net import BusAddress
from ..protocol import DeadlineExceeded, RemoteError, Unavailable
from .common import (
    ExitCode,
    VALUE_SYNTAX,
    UsageError,
    add_client_security,
    add_server,
    add_verbosity,
    add_version,
    address_from_args,
    curve_client_from_args,
    fail,
    log_level,
    parse_arguments,
    reporting_errors,
)
from .dataset_commands import add_dataset_commands
from .device_commands import add_device_commands
from .repository_commands import add_repository_commands
from .show_commands import add_show_commands

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

    _add_submit(commands)
    delete = commands.add_parser("delete", help="delete an experiment from the schedule")
    delete.add_argument("-g", action="store_true",
                        help="request graceful termination (the experiment may finish "
                             "cleanly) instead of deleting at once")
    delete.add_argument("rid", metavar="RID", type=int, help="run identifier (RID)")
    delete.set_defaults(func=_action_delete)

    add_dataset_commands(commands)
    add_repository_commands(commands)
    add_device_commands(commands)

    terminate = commands.add_parser("terminate", help="stop the master")
    terminate.set_defaults(func=_action_terminate)

    add_show_commands(commands)
    return parser


def _add_submit(commands: Any) -> None:
    submit = commands.add_parser("submit", help="submit an experiment", epilog=VALUE_SYNTAX)
    submit.add_argument("-p", "--pipeline", default="main",
                        help="pipeline to run the experiment in (default: %(default)s)")
    submit.add_argument("-P", "--priority", default=0, type=int,
                        help="priority (higher runs first, default: %(default)s)")
    submit.add_argument("-t", "--timed", default=None, metavar="DUE_DATE",
                        help="do not run before this date and time (local time)")
    submit.add_argument("-f", "--flush", action="store_true",
                        help="wait for the runs before it in the pipeline to finish")
    submit.add_argument("-R", "--repository", action="store_true",
                        help="take FILE from the master's repository")
    submit.add_argument("-r", "--revision", default=None,
                        help="repository revision (with -R; default: the current one)")
    submit.add_argument("--devarg-override", default="",
                        help="override device arguments: 'device:argument=PYON ...'")
    submit.add_argument("--content", action="store_true",
                        help="send the file's text instead of its path (no sibling imports)")
    submit.add_argument("-c", "--class-name", default=None,
                        help="experiment class to run (needed when the file has several)")
    submit.add_argument("file", metavar="FILE", help="the experiment file")
    submit.add_argument("arguments", metavar="ARGUMENTS", nargs="*",
                        help="run arguments, KEY=VALUE (VALUE in PYON)")
    submit.set_defaults(func=_action_submit)


def _due_date(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return dateutil.parser.parse(text).timestamp()
    except (ValueError, OverflowError) as exc:
        raise UsageError(f"cannot read the date {text!r}: {exc}") from None


def _devarg_override(text: str) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {}
    for item in text.split():
        device, sep, assignment = item.partition(":")
        argument, sep2, value = assignment.partition("=")
        if not (sep and sep2 and device and argument):
            raise UsageError(f"device argument override {item!r} is not "
                             "'device:argument=PYON'")
        try:
            overrides.setdefault(device, {})[argument] = pyon.decode(value)
        except ValueError as exc:
            raise UsageError(f"device argument override {item!r}: {exc}") from None
    return overrides


def make_expid(args: argparse.Namespace) -> dict[str, Any]:
    """The expid of a ``submit`` command line (ARTIQ's fields)."""
    if args.revision is not None and not args.repository:
        raise UsageError("-r/--revision needs -R/--repository")
    if args.content and args.repository:
        raise UsageError("--content cannot be used with -R/--repository")
    arguments, _ = parse_arguments(args.arguments)
    expid: dict[str, Any] = {"log_level": log_level(args), "class_name": args.class_name,
                             "arguments": arguments}
    if args.devarg_override:
        expid["devarg_override"] = _devarg_override(args.devarg_override)
    if args.content:
        try:
            expid["content"] = Path(args.file).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    else:
        expid["file"] = args.file
    if args.repository:
        expid["repo_rev"] = args.revision
    return expid


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


def _action_submit(session: Session) -> None:
    args = session.args
    expid = make_expid(args)
    rid = session.call("scheduler", "submit", args.pipeline, expid, args.priority,
                       _due_date(args.timed), args.flush)
    print(f"RID: {rid}")


def _action_delete(session: Session) -> None:
    if session.args.g:
        session.call("scheduler", "request_termination", session.args.rid)
    else:
        session.call("scheduler", "delete", session.args.rid)


def _action_terminate(session: Session) -> None:
    session.call("master", "terminate")


def _run(action: Callable[[Session], None], args: argparse.Namespace) -> None:
    session = Session(args)
    try:
        action(session)
    finally:
        session.close()


def main(argv: list[str] | None = None) -> None:
    # Ctrl-C ends the live views even when started from a shell that ignores SIGINT
    # for its background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    with reporting_errors(PROGRAM):
        try:
            _run(args.func, args)
        except RemoteError as exc:
            fail(PROGRAM, f"the master refused: {exc}", ExitCode.ERROR)


if __name__ == "__main__":
    main()

"""Flags and helpers every command shares: verbosity, the server to reach, keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from .. import __version__, pyon
from ..net import CLIENT_KEY_ENV, SERVER_KEY_ENV, BusAddress, CurveClient
from ..net.addresses import DEFAULT_CONTROL_PORT
from ..net.errors import NetError
from ..nodes.errors import NodeConfigError
from ..nodes.log import CONSOLE_FORMAT
from ..protocol import BusError, Unavailable

__all__ = ["CommandError", "UsageError", "VALUE_SYNTAX", "parse_arguments", "ExitCode",
           "add_verbosity", "log_level", "init_console_logging", "add_client_security",
           "curve_client_from_args", "add_version", "fail", "add_server",
           "address_from_args", "reporting_errors", "until_interrupted"]


class ExitCode(enum.IntEnum):
    """Exit codes of every artiq_bus command."""

    OK = 0
    ERROR = 1          # the request failed: the service said no
    USAGE = 2          # bad flags or arguments (argparse uses 2 as well)
    UNAVAILABLE = 3    # no master answered
    CONFIG = 4         # a configuration that cannot work (keys, binds)


class CommandError(Exception):
    """Ends a command with this one-line message and :attr:`code`."""

    code = ExitCode.ERROR


class UsageError(CommandError):
    """The command line names something unusable: a file, a class, an argument."""

    code = ExitCode.USAGE


#: The ``--help`` text on ``KEY=VALUE`` arguments.
VALUE_SYNTAX = ("KEY=VALUE: VALUE is a Python literal or JSON (PYON): 3, 1.5e-3, True, "
                "None, \"text\", [1, 2], {\"a\": 1}, (1, 2). Quote it for the shell: "
                "word='\"hello\"'.")


def parse_arguments(items: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``KEY=VALUE`` items → (key → PYON-decoded value, key → the VALUE text)."""
    values: dict[str, Any] = {}
    texts: dict[str, str] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {item!r} is not KEY=VALUE")
        if key in values:
            raise UsageError(f"argument {key!r} is given twice")
        try:
            values[key] = pyon.decode(text)
        except ValueError:
            hint = "" if text[:1] in "\"'" else f" (a string needs quotes: {key}='\"{text}\"')"
            raise UsageError(f"argument {key!r}: {text!r} is not a PYON value{hint}") from None
        texts[key] = text
    return values, texts



def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"artiq_bus v{__version__}")


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("verbosity")
    group.add_argument("-v", "--verbose", default=0, action="count",
                       help="increase logging level")
    group.add_argument("-q", "--quiet", default=0, action="count",
                       help="decrease logging level")


def log_level(args: argparse.Namespace) -> int:
    """WARNING, one step (10) lower per -v and higher per -q, as ARTIQ does."""
    return logging.WARNING + 10 * (args.quiet - args.verbose)


class _ConsoleFormatter(logging.Formatter):
    """The console format of every program; records without a source are this process's own
    (the record is not changed: a bus log handler tells them apart by that)."""

    def __init__(self, source: str):
        super().__init__(CONSOLE_FORMAT)
        self.source = source

    def format(self, record: logging.LogRecord) -> str:
        if hasattr(record, "source"):
            return super().format(record)
        setattr(record, "source", self.source)  # the format's %(source)s
        try:
            return super().format(record)
        finally:
            delattr(record, "source")


def init_console_logging(level: int, source: str) -> None:
    """Records of ``level`` and above on stderr; this process's own show ``source``
    (``master``, ``node(log)``, ``ctlmgr(HOST)``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ConsoleFormatter(source))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


def add_client_security(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("CurveZMQ (when the master requires it)")
    group.add_argument("--curve-server-key", default=None, metavar="FILE",
                       help=f"the master's public key file (NAME.key); default ${SERVER_KEY_ENV}")
    group.add_argument("--curve-client-key", default=None, metavar="FILE",
                       help=f"this client's secret key file (NAME.key_secret); "
                            f"default ${CLIENT_KEY_ENV}")


#: Defaults of ``--server`` and ``--port`` (a Git hook needs no flags for a master on
#: another port: it inherits them from the environment of the ``git push``).
SERVER_ENV = "ARTIQ_BUS_SERVER"
PORT_ENV = "ARTIQ_BUS_PORT"


def add_server(parser: argparse.ArgumentParser, default_port: int = DEFAULT_CONTROL_PORT) -> None:
    parser.add_argument("-s", "--server", default=os.environ.get(SERVER_ENV) or "::1",
                        help="hostname or IP (v4 or v6) of the master (default: "
                             f"${SERVER_ENV}, else %(default)s)")
    parser.add_argument("--port", default=os.environ.get(PORT_ENV) or default_port,
                        type=int, help=f"the master's control port (default: ${PORT_ENV}, "
                                       "else %(default)s)")


def curve_client_from_args(args: argparse.Namespace) -> CurveClient | None:
    return CurveClient.from_files(args.curve_server_key, args.curve_client_key)


def address_from_args(args: argparse.Namespace) -> BusAddress:
    return BusAddress.from_host(args.server, args.port)


@contextlib.contextmanager
def reporting_errors(program: str) -> Iterator[None]:
    """Around a command's work: what a user can cause ends the command with one line and
    its exit code, never a traceback; Ctrl-C ends it quietly."""
    try:
        yield
    except KeyboardInterrupt:
        pass
    except CommandError as exc:
        fail(program, str(exc), exc.code)
    except Unavailable as exc:
        fail(program, str(exc), ExitCode.UNAVAILABLE)
    except (NetError, NodeConfigError) as exc:
        fail(program, str(exc), ExitCode.CONFIG)
    except BusError as exc:
        fail(program, f"{type(exc).__name__}: {exc}", ExitCode.ERROR)


async def until_interrupted() -> None:
    """Return at Ctrl-C (SIGINT) or SIGTERM: the caller then ends as it would at the
    end of its work (its ``finally`` blocks run, exit code 0).

    The loop's own signal handling, not ``asyncio.run``'s KeyboardInterrupt: a signal
    that writes to the loop's wake-up pipe wakes a loop asleep in ``select`` whichever
    thread takes it (the package blocks these signals in numpy's threads, see
    :mod:`artiq_bus.frontend`, but a library may start others).
    """
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    signums = (signal.SIGINT, signal.SIGTERM)
    for signum in signums:
        loop.add_signal_handler(signum, interrupted.set)
    try:
        await interrupted.wait()
    finally:
        for signum in signums:
            loop.remove_signal_handler(signum)


def fail(program: str, message: str, code: ExitCode) -> NoReturn:
    print(f"{program}: {message}", file=sys.stderr)
    raise SystemExit(int(code))


"""Command-line helpers for controllers, under sipyco.common_args' names.

A controller's ``main`` written for sipyco keeps its shape::

    parser = argparse.ArgumentParser()
    common_args.simple_network_args(parser, 3280)
    common_args.verbosity_args(parser)
    args = parser.parse_args()
    common_args.init_logger_from_args(args)
    simple_server_loop(targets, common_args.bind_address_from_args(args), args.port)

Beyond sipyco: ``--curve-secret-key``/``--curve-allowed-keys`` and ``--insecure``, which a
bind to anything but loopback needs (the hosts returned by :func:`bind_address_from_args`
carry them to :func:`~artiq_bus.rpc.simple_server_loop`).  Log lines go to stderr as
``LEVEL:name:message`` (``LEVEL<n>:`` when a message has *n* lines), which
``artiq_ctlmgr`` reads back into records.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..net import CurveServer, resolve_bind_hosts
from ..net.errors import NetError

__all__ = ["verbosity_args", "init_logger_from_args", "simple_network_args",
           "bind_address_from_args", "BindHosts", "MultilineFormatter", "CONFIG_EXIT_CODE"]

#: Exit code of a controller whose network flags cannot work (artiq_bus's CONFIG).
CONFIG_EXIT_CODE = 4


class MultilineFormatter(logging.Formatter):
    """``LEVEL:name:message``; a message of n > 1 lines starts ``LEVEL<n>:``."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s:%(name)s:%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        lines = text.count("\n") + 1
        if lines > 1:
            text = text.replace(":", f"<{lines}>:", 1)
        return text


def verbosity_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("verbosity")
    group.add_argument("-v", "--verbose", default=0, action="count",
                       help="increase logging level")
    group.add_argument("-q", "--quiet", default=0, action="count",
                       help="decrease logging level")


def init_logger_from_args(args: argparse.Namespace) -> None:
    """Log to stderr at WARNING, 10 lower per ``-v`` and 10 higher per ``-q``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MultilineFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING + 10 * (args.quiet - args.verbose))


def simple_network_args(parser: argparse.ArgumentParser, default_port: int) -> None:
    group = parser.add_argument_group("network server")
    group.add_argument("--bind", default=[], action="append", metavar="HOST",
                       help="also listen on this address (repeatable; '*' = all "
                            "interfaces); needs CurveZMQ keys or --insecure")
    group.add_argument("--no-localhost-bind", default=False, action="store_true",
                       help="do not listen on 127.0.0.1 and ::1")
    group.add_argument("-p", "--port", default=default_port, type=int,
                       help="TCP port to listen on (default: %(default)d)")
    group.add_argument("--curve-secret-key", default=None, metavar="FILE",
                       help="this controller's CurveZMQ key pair (NAME.key_secret)")
    group.add_argument("--curve-allowed-keys", default=None, metavar="DIR",
                       help="directory of the public keys (*.key) of allowed clients")
    group.add_argument("--insecure", default=False, action="store_true",
                       help="allow a non-loopback --bind without CurveZMQ keys")


class BindHosts(list[str]):
    """The hosts to listen on, with the security the command line asked for."""

    def __init__(self, hosts: list[str], curve: CurveServer | None, insecure: bool):
        super().__init__(hosts)
        self.curve = curve
        self.insecure = insecure


def bind_address_from_args(args: argparse.Namespace) -> BindHosts:
    """The hosts of ``--bind``/``--no-localhost-bind`` and the CurveZMQ keys; a flag that
    cannot work ends the program with one line and exit code 4."""
    try:
        hosts = resolve_bind_hosts(args.bind, not args.no_localhost_bind)
        curve = None
        if args.curve_secret_key or args.curve_allowed_keys:
            if not (args.curve_secret_key and args.curve_allowed_keys):
                raise NetError("CurveZMQ needs both --curve-secret-key and "
                               "--curve-allowed-keys")
            curve = CurveServer.load(args.curve_secret_key, args.curve_allowed_keys)
    except NetError as exc:
        print(f"{sys.argv[0]}: {exc}", file=sys.stderr)
        raise SystemExit(CONFIG_EXIT_CODE) from None
    return BindHosts(hosts, curve, args.insecure)

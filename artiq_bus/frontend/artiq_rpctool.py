"""``artiq_rpctool``: talk to a controller from the shell (sipyco_rpctool's commands).

``artiq_rpctool HOST PORT list-targets | list-methods [-t T] | call [-t T] METHOD
ARGS... | interactive [-t T]``.  ``call`` arguments are PYON values (never evaluated as
Python); ``interactive`` reads Python expressions typed by the user, with the target's
methods and ``np`` in scope, as sipyco's did.
"""

from __future__ import annotations

import argparse
import os
import pprint
import sys
import textwrap
from typing import Any

import numpy as np

from .. import pyon
from ..protocol import RemoteError
from ..net import CurveClient, load_public_key, load_secret_key
from ..rpc import AutoTarget, Client, NoSuchTarget
from .common import CommandError, UsageError, add_version, reporting_errors

__all__ = ["main", "build_parser"]

PROGRAM = "artiq_rpctool"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM,
                                     description="Call the methods of a controller")
    add_version(parser)
    parser.add_argument("server", metavar="HOST", help="the controller's host")
    parser.add_argument("port", metavar="PORT", type=int, help="the controller's port")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="how long a call may take (default: no limit)")
    security = parser.add_argument_group("CurveZMQ (when the controller requires it)")
    security.add_argument("--curve-server-key", default=None, metavar="FILE",
                          help="the controller's public key file (NAME.key)")
    security.add_argument("--curve-client-key", default=None, metavar="FILE",
                          help="this client's secret key file (NAME.key_secret)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list-targets", help="list the controller's targets")
    for name, help_text in (("list-methods", "list a target's methods"),
                            ("call", "call a method"),
                            ("interactive", "type calls at a prompt")):
        sub = actions.add_parser(name, help=help_text)
        sub.add_argument("-t", "--target", default=None,
                         help="the target (default: the controller's only target)")
        if name == "call":
            sub.add_argument("method", metavar="METHOD", help="the method")
            sub.add_argument("args", metavar="ARGS", nargs="*",
                             help="arguments (PYON values: 1, 2.5, '\"text\"', [1, 2])")
    return parser


def _list_targets(client: Client) -> None:
    targets, description = client.get_rpc_id()
    print("Target(s):   " + ", ".join(targets))
    if description is not None:
        print("Description: " + description)


def _list_methods(client: Client) -> None:
    listing = client.get_rpc_method_list()
    if listing.get("docstring"):
        print(listing["docstring"])
        print()
    for name, method in sorted(listing["methods"].items()):
        print(name + method.get("signature", "(...)"))
        if method.get("docstring"):
            print(textwrap.indent(method["docstring"], "    "))
        print()


def _call(client: Client, method: str, texts: list[str]) -> None:
    args = []
    for text in texts:
        try:
            args.append(pyon.decode(text))
        except ValueError:
            raise UsageError(f"argument {text!r} is not a PYON value (a string needs "
                             f"quotes: '\"{text}\"')") from None
    try:
        function = getattr(client, method)
    except AttributeError as exc:
        raise UsageError(str(exc)) from None
    result = function(*args)
    if result is not None:
        pprint.pprint(result)


def _interactive(client: Client) -> None:
    namespace: dict[str, Any] = {"np": np}
    for name in client.get_rpc_method_list()["methods"]:
        namespace[name] = getattr(client, name)
    prompt = f"{client.get_selected_target()}> "
    while True:
        try:
            line = input(prompt)
        except EOFError:
            print()
            return
        if not line.strip():
            continue
        try:
            result = eval(line, namespace)  # the user's own typing, in their own shell
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}")
        else:
            if result is not None:
                pprint.pprint(result)


def _curve(args: argparse.Namespace) -> CurveClient | None:
    """The controller's keys: flags only (the ARTIQ_BUS_* variables are the master's)."""
    if args.curve_server_key is None and args.curve_client_key is None:
        return None
    if args.curve_server_key is None or args.curve_client_key is None:
        raise UsageError("CurveZMQ needs both --curve-server-key and --curve-client-key")
    public, secret = load_secret_key(args.curve_client_key)
    return CurveClient(load_public_key(args.curve_server_key), public, secret)


def _run(args: argparse.Namespace) -> None:
    target = None if args.action == "list-targets" else (args.target or AutoTarget)
    try:
        client = Client(args.server, args.port, target, args.timeout, curve=_curve(args))
    except (NoSuchTarget, ValueError) as exc:
        raise UsageError(str(exc)) from None
    with client:
        if args.action == "list-targets":
            _list_targets(client)
        elif args.action == "list-methods":
            _list_methods(client)
        elif args.action == "call":
            _call(client, args.method, args.args)
        else:
            _interactive(client)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with reporting_errors(PROGRAM):
        try:
            _run(args)
            sys.stdout.flush()
        except RemoteError as exc:  # the method raised: say what, as the controller said
            raise CommandError(str(exc)) from None
        except BrokenPipeError:  # output piped into head(1) and the like: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()

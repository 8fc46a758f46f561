"""``artiq_keygen``: make a CurveZMQ key pair for the master or for a client."""

from __future__ import annotations

import argparse

from ..net import generate_key_pair
from .common import ExitCode, add_version, fail

__all__ = ["main"]

PROGRAM = "artiq_keygen"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Make a CurveZMQ key pair: NAME.key (public: give it "
        "to the other side) and NAME.key_secret (keep it private).")
    add_version(parser)
    parser.add_argument("name", help="name of the key pair, e.g. 'master' or 'alice'")
    parser.add_argument("-d", "--directory", default=".",
                        help="where to write the files (default: current directory)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        public, secret = generate_key_pair(args.directory, args.name)
    except OSError as exc:
        fail(PROGRAM, f"cannot write keys: {exc}", ExitCode.CONFIG)
    print(f"public key: {public}\nsecret key: {secret}")


if __name__ == "__main__":
    main()

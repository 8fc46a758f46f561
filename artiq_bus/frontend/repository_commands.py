"""``artiq_client``'s repository commands: ``scan-repository`` and ``ls``.

``scan-repository`` waits for the scan unless ``--async`` (what a Git ``post-receive``
hook uses: the push returns at once).  ``ls`` lists a directory of the master's machine
(for files outside the repository), folders first, as ARTIQ prints it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .artiq_client import Session

__all__ = ["add_repository_commands", "SCAN_TIMEOUT_S"]

#: How long ``scan-repository`` waits for a scan that examines many new files.
SCAN_TIMEOUT_S = 3600.0


def add_repository_commands(commands: Any) -> None:
    """The ``scan-repository`` and ``ls`` subcommands."""
    scan = commands.add_parser("scan-repository",
                               help="scan the repository (make the new revision current)")
    scan.add_argument("--async", action="store_true", dest="asynchronous",
                      help="return at once, without waiting for the scan to end")
    scan.add_argument("revision", metavar="REVISION", nargs="?", default=None,
                      help="the revision to scan (commit hash, branch, tag; default: the "
                           "head)")
    scan.set_defaults(func=_action_scan_repository)

    ls = commands.add_parser("ls", help="list a directory on the master's machine")
    ls.add_argument("directory", metavar="DIRECTORY", nargs="?", default="",
                    help="the directory (relative to the master's working directory; "
                         "default: the root, /)")
    ls.set_defaults(func=_action_ls)


def _action_scan_repository(session: "Session") -> None:
    args = session.args
    if args.asynchronous:
        session.call("repository", "scan_repository_async", args.revision)
    else:
        session.call("repository", "scan_repository", args.revision,
                     timeout_s=SCAN_TIMEOUT_S)


def _action_ls(session: "Session") -> None:
    names = session.call("repository", "list_directory", session.args.directory)
    for name in sorted(names, key=lambda name: (not name.endswith(("/", "\\")), name)):
        print(name)

"""The threads of a process, as /proc shows them (for signal-delivery tests)."""

from __future__ import annotations

import re
import signal
from pathlib import Path


def other_threads(pid: int) -> list[int]:
    """The IDs of the process's threads other than its main one."""
    return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()
            if int(task.name) != pid]


def blocks(pid: int, tid: int, signum: signal.Signals) -> bool:
    """Whether thread ``tid`` of ``pid`` blocks ``signum``."""
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    match = re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.M)
    assert match, status
    return bool(int(match[1], 16) >> (signum - 1) & 1)

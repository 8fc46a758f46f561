"""The states a run goes through (ARTIQ's names and numbers, published as the name)."""

from __future__ import annotations

import enum

__all__ = ["RunStatus", "Stage", "QUEUED", "ACTIVE"]


class RunStatus(enum.Enum):
    """Status of a run; the schedule struct carries ``status.name`` (e.g. ``"pending"``)."""

    pending = 0
    flushing = 1
    preparing = 2
    prepare_done = 3
    running = 4
    run_done = 5
    analyzing = 6
    deleting = 7
    paused = 8


class Stage(enum.Enum):
    """The three stages of a pipeline (named in log messages)."""

    prepare = "prepare"
    run = "run"
    analyze = "analyze"


#: Waiting for the prepare stage: these survive a master restart and are run again.
QUEUED = frozenset({RunStatus.pending, RunStatus.flushing})

#: A worker holds the run: after a master crash these are reported as interrupted.
ACTIVE = frozenset({RunStatus.preparing, RunStatus.prepare_done, RunStatus.running,
                    RunStatus.paused, RunStatus.run_done, RunStatus.analyzing})

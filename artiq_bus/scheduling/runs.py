"""One submitted run, as the engine keeps it, and its external forms: the schedule
entry (what clients see), the persisted record (what survives a master crash) and the
outcome text of a results file the engine writes for it."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .errors import WorkerCrashed, WorkerError, WorkerTimeout
from .status import RunStatus, Stage
from .tasks import Flag
from .worker import WorkerHandle

__all__ = ["Run", "RunKey", "RECORD_FIELDS", "check_submission", "INTERRUPTED", "describe",
           "needs_results", "failure_outcome"]

#: ``(priority, -(due_date or 0), -rid)``: the maximum goes first (reference §3.5).
RunKey = tuple[int, float, int]

#: Keys of a persisted record.
RECORD_FIELDS = ("pipeline", "expid", "priority", "due_date", "flush", "status", "repo_msg",
                 "start_time", "run_time", "class_name")


@dataclasses.dataclass(eq=False)
class Run:
    """A run from submission to deletion."""

    rid: int
    pipeline: str
    expid: dict[str, Any]
    priority: int
    due_date: float | None
    flush: bool
    repo_msg: str | None = None
    wd: str | None = None
    #: The revision to release at deletion (repository submissions only).
    pinned_rev: str | None = None
    status: RunStatus = RunStatus.pending
    worker: WorkerHandle | None = None
    termination_requested: bool = False
    #: Epoch time the build started / ``run()`` first started (None: not yet).
    start_time: float | None = None
    run_time: float | None = None
    #: The experiment class's name once built (names a results file the engine writes).
    class_name: str | None = None
    #: Set when deletion starts: every stage call on this run is abandoned.
    deleted: Flag = dataclasses.field(default_factory=Flag)

    @property
    def key(self) -> RunKey:
        return (self.priority, -(self.due_date or 0), -self.rid)

    def entry(self) -> dict[str, Any]:
        """The schedule entry (the struct takes ownership of the new dict)."""
        return {"pipeline": self.pipeline, "expid": self.expid, "priority": self.priority,
                "due_date": self.due_date, "flush": self.flush, "status": self.status.name,
                "repo_msg": self.repo_msg}

    def record(self) -> dict[str, Any]:
        """The persisted record: the entry plus the start and run times and the class."""
        return {**self.entry(), "start_time": self.start_time, "run_time": self.run_time,
                "class_name": self.class_name}

    @classmethod
    def from_record(cls, rid: int, record: dict[str, Any]) -> Run:
        """A pending run rebuilt from its persisted record (ValueError if malformed)."""
        try:
            run = cls(rid=rid, pipeline=record["pipeline"], expid=record["expid"],
                      priority=record["priority"], due_date=record["due_date"],
                      flush=record["flush"], repo_msg=record.get("repo_msg"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed record: {exc!r}") from None
        check_submission(run.pipeline, run.expid, run.priority, run.due_date, run.flush)
        return run


def check_submission(pipeline: Any, expid: Any, priority: Any, due_date: Any,
                     flush: Any) -> None:
    """ValueError unless the arguments of a submission have the types the schedule
    entry promises."""
    if not isinstance(pipeline, str):
        raise ValueError(f"pipeline name must be a string, not {type(pipeline).__name__}")
    if not isinstance(expid, dict):
        raise ValueError(f"expid must be a dict, not {type(expid).__name__}")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValueError(f"priority must be an integer, not {priority!r}")
    if due_date is not None and (isinstance(due_date, bool)
                                 or not isinstance(due_date, (int, float))
                                 or not math.isfinite(due_date)):
        raise ValueError(f"due date must be None or an epoch time, not {due_date!r}")
    if not isinstance(flush, bool):
        raise ValueError(f"flush must be a bool, not {flush!r}")


# -- outcomes -----------------------------------------------------------------------

#: Outcome of a run that the master's end cut short (crash, or stop while active).
INTERRUPTED = "interrupted: master stopped"


def describe(exc: BaseException) -> str:
    """``"Type: message"`` (``"Type"`` without a message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def needs_results(stage: Stage, exc: Exception) -> bool:
    """Whether the engine writes the results file of a failed stage: never over the
    worker's own; in prepare only when the worker itself failed (an experiment that
    raised in build/prepare has no results, as in ARTIQ)."""
    if isinstance(exc, WorkerError) and exc.results_written:
        return False
    return stage is not Stage.prepare or isinstance(exc, (WorkerCrashed, WorkerTimeout))


def failure_outcome(exc: Exception, exit_description: str | None) -> str:
    """E.g. ``"worker died: killed by signal 9"``, ``"watchdog expired: ..."``,
    ``"error: ValueError: ..."``."""
    if isinstance(exc, WorkerCrashed) and exit_description:
        return f"{exc.outcome_prefix}: {exit_description}"
    if isinstance(exc, WorkerError):
        return f"{exc.outcome_prefix}: {exc}" if str(exc) else exc.outcome_prefix
    return f"error: {describe(exc)}"

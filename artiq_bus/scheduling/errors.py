"""Exceptions of the scheduling engine.

::

    Exception
     ├── WorkerError                a worker failed in a stage (raised by WorkerHandle)
     │    ├── WorkerCrashed         the process died (exit_description says how)
     │    └── WorkerTimeout
     │         ├── WorkerWatchdogTimeout   a user watchdog expired
     │         └── WorkerBuildTimeout      build (import + build()) took too long
     └── SchedulerError
          ├── SchedulerNotStarted   submit() before start()
          ├── InvalidSubmission     an expid/priority/due date the scheduler cannot take
          ├── RepositoryUnavailable a repository submission without a repository
          ├── PauseNotAllowed       pause() outside run(), or twice at once
          └── RIDNotFound (also KeyError)  check_pause/pause of an unknown RID

A plain :class:`WorkerError` means the experiment itself raised (the worker logged the
details); the subclasses mean the process failed.  ``results_written`` tells the engine
whether the worker wrote the run's results file before failing, so that the engine
never overwrites it.
"""

from __future__ import annotations

__all__ = ["WorkerError", "WorkerCrashed", "WorkerTimeout", "WorkerWatchdogTimeout",
           "WorkerBuildTimeout", "SchedulerError", "SchedulerNotStarted",
           "InvalidSubmission", "RepositoryUnavailable", "PauseNotAllowed", "RIDNotFound",
           "RunDeleted"]


class WorkerError(Exception):
    """A worker failed in a stage: the experiment raised (this class) or the process
    failed (subclasses)."""

    #: First words of the results-file outcome for this failure.
    outcome_prefix = "error"

    def __init__(self, message: str = "", *, results_written: bool = False):
        super().__init__(message)
        self.results_written = results_written


class WorkerCrashed(WorkerError):
    """The worker process died (or stopped answering) during a stage."""

    outcome_prefix = "worker died"


class WorkerTimeout(WorkerError):
    """The worker did not finish something within its deadline and was terminated."""

    outcome_prefix = "worker timed out"


class WorkerWatchdogTimeout(WorkerTimeout):
    """A ``watchdog()`` of the experiment expired."""

    outcome_prefix = "watchdog expired"


class WorkerBuildTimeout(WorkerTimeout):
    """Importing the experiment and running ``build()`` exceeded the build timeout."""

    outcome_prefix = "build timed out"


class SchedulerError(Exception):
    """Base of the errors the scheduler raises to its callers."""


class SchedulerNotStarted(SchedulerError):
    """The scheduler was used before ``start()``."""


class InvalidSubmission(SchedulerError):
    """A submission the scheduler cannot take (malformed expid, priority, due date)."""


class RepositoryUnavailable(SchedulerError):
    """An expid with ``repo_rev`` was submitted to a scheduler without a repository."""


class PauseNotAllowed(SchedulerError):
    """``pause()`` was requested while the run is not running (ARTIQ desynchronises
    its IPC here), or while a pause request of the run is already waiting."""


class RIDNotFound(SchedulerError, KeyError):
    """No run has this RID."""

    def __init__(self, rid: object):
        super().__init__("RID not found")
        self.rid = rid

    def __str__(self) -> str:
        return f"RID {self.rid!r} not found"


class RunDeleted(Exception):
    """The run was deleted meanwhile: a stage drops it silently (ARTIQ: "a deleted run
    never raises"); a waiting ``pause()`` gets it as its answer (by this name, over
    the wire), and the experiment stops without a results file."""

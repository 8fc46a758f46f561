"""The scheduling engine: ARTIQ's run scheduling as pure asyncio (no sockets).

:class:`Scheduler` (:mod:`.engine`) drives one :class:`WorkerHandle` per run
(:mod:`.worker`) through pipelines of three stages (:mod:`.pipeline`), publishes the
``schedule`` struct, persists the queued and active runs (:mod:`.persist`), and takes
RIDs from a :class:`RIDCounter` (:mod:`.rid`).
"""

from .engine import ResultsWriter, Scheduler, ScheduleStruct
from .errors import (InvalidSubmission, PauseNotAllowed, RepositoryUnavailable, RIDNotFound,
                     SchedulerError, SchedulerNotStarted, WorkerBuildTimeout, WorkerCrashed,
                     WorkerError, WorkerTimeout, WorkerWatchdogTimeout)
from .rid import RIDCounter
from .runs import INTERRUPTED
from .status import RunStatus
from .worker import PauseGate, WorkerFactory, WorkerHandle

__all__ = ["Scheduler", "ScheduleStruct", "ResultsWriter", "RIDCounter", "RunStatus",
           "WorkerHandle", "WorkerFactory", "PauseGate", "INTERRUPTED",
           "WorkerError", "WorkerCrashed", "WorkerTimeout", "WorkerWatchdogTimeout",
           "WorkerBuildTimeout", "SchedulerError", "SchedulerNotStarted",
           "InvalidSubmission", "RepositoryUnavailable", "PauseNotAllowed", "RIDNotFound"]

"""Exceptions of the worker side (the process that runs experiment code).

::

    Exception
     └── WorkerError
          ├── DeviceError               a device could not be created
          │    └── ControllerUnsupported  controllers cannot be used here
          ├── InteractiveUnavailable    no one to ask for interactive arguments
          ├── NotBuilt                  a stage after a build() that failed
          └── ResultsDirectoryError     the run's working directory cannot be made
    BaseException
     └── RunDeletedWhilePaused          unwinds the experiment; no results file

Errors the experiment API defines for users (``DefaultMissing``,
``CancelledArgsError``, ...) live in :mod:`artiq_bus.language.errors`.
"""

from __future__ import annotations

__all__ = ["WorkerError", "DeviceError", "ControllerUnsupported", "InteractiveUnavailable",
           "NotBuilt", "ResultsDirectoryError", "RunDeletedWhilePaused"]


class WorkerError(Exception):
    """Base of the worker-side errors."""


class DeviceError(WorkerError):
    """A device of the device database could not be created; the cause is chained."""


class ControllerUnsupported(DeviceError):
    """A ``controller`` entry was requested where controllers cannot be used."""


class InteractiveUnavailable(WorkerError):
    """Interactive arguments were requested where no user can be asked."""


class NotBuilt(WorkerError):
    """A stage was asked of a worker whose experiment was not built: the master sends
    ``prepare`` right behind ``build`` and drops this answer when the build failed."""


class ResultsDirectoryError(WorkerError):
    """The run's working directory, ``results/YYYY-MM-DD/HH/``, cannot be made or
    entered (a file in its way, no permission, a full disk)."""


class RunDeletedWhilePaused(BaseException):
    """The run was deleted while ``scheduler.pause()`` waited: the experiment unwinds
    (a BaseException, so that ``except Exception`` in user code does not stop it) and
    no results file is written, as in ARTIQ."""

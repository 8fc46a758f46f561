"""The process that runs experiment code, and what experiments use from it.

Local pieces (``artiq_run``, tests, repository examination): argument managers
(:mod:`.arguments`), the device database and device manager (:mod:`.devices`), the
dataset manager and an in-process dataset store (:mod:`.datasets`), file loading and
experiment discovery (:mod:`.tools`), the ``import artiq`` hook (:mod:`.compat`), and
the manager interfaces an experiment is built with (:mod:`.interfaces`).
"""

from .arguments import InteractiveHandler, ProcessArgumentManager, TraceArgumentManager
from .compat import install_artiq_compat, uninstall_artiq_compat
from .datasets import DatasetBackend, DatasetManager, LocalDatasetBackend, dataset_index
from .devices import (ActiveDevice, ControllerFactory, DeviceDB, DeviceManager, DeviceType,
                      DummyDevice, unsupported_controller)
from .errors import ControllerUnsupported, DeviceError, InteractiveUnavailable, WorkerError
from .interfaces import (ArgDesc, ArgumentManagerProtocol, DatasetManagerProtocol,
                         DeviceManagerProtocol, Managers)
from .tools import file_import, forget_new_modules, get_experiment

__all__ = [
    "InteractiveHandler", "ProcessArgumentManager", "TraceArgumentManager",
    "install_artiq_compat", "uninstall_artiq_compat",
    "DatasetBackend", "DatasetManager", "LocalDatasetBackend", "dataset_index",
    "ActiveDevice", "ControllerFactory", "DeviceDB", "DeviceManager", "DeviceType",
    "DummyDevice", "unsupported_controller",
    "ControllerUnsupported", "DeviceError", "InteractiveUnavailable", "WorkerError",
    "ArgDesc", "ArgumentManagerProtocol", "DatasetManagerProtocol", "DeviceManagerProtocol",
    "Managers",
    "file_import", "forget_new_modules", "get_experiment",
]

"""What an experiment in a worker reaches over the bus: the ``scheduler`` and ``ccb``
virtual devices, and the master's datasets."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from ..language.core import TerminationRequested
from ..protocol import VERSION, NoSuchService, pack, stream_topic

if TYPE_CHECKING:
    from .process import WorkerBus

__all__ = ["BusScheduler", "BusCCB", "BusDatasetBackend", "WAIT_FOREVER_S"]

#: Calls that wait for a person or for other runs (pause, interactive arguments).
WAIT_FOREVER_S = 30 * 24 * 3600.0


class BusScheduler:
    """The ``scheduler`` virtual device: this run's identity and the master's scheduler."""

    def __init__(self, bus: WorkerBus, rid: int, pipeline_name: str, priority: int,
                 expid: dict[str, Any]):
        self._bus = bus
        self.rid, self.pipeline_name, self.priority, self.expid = (rid, pipeline_name,
                                                                   priority, expid)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._bus.call("scheduler", method, *args, **kwargs)

    def pause(self) -> None:
        """Let more important runs go first; raises TerminationRequested if asked to stop."""
        if self._bus.call("scheduler", "pause", self.rid, timeout_s=WAIT_FOREVER_S):
            raise TerminationRequested

    def check_pause(self, rid: int | None = None) -> bool:
        return bool(self._call("check_pause", self.rid if rid is None else rid))

    def check_termination(self, rid: int | None = None) -> bool:
        return bool(self._call("check_termination", self.rid if rid is None else rid))

    def submit(self, pipeline_name: str | None = None, expid: dict[str, Any] | None = None,
               priority: int | None = None, due_date: float | None = None,
               flush: bool = False) -> int:
        return self._call("submit", self.pipeline_name if pipeline_name is None else pipeline_name,
                          self.expid if expid is None else expid,
                          self.priority if priority is None else priority, due_date, flush)

    def delete(self, rid: int) -> None:
        self._call("delete", rid)

    def request_termination(self, rid: int) -> None:
        self._call("request_termination", rid)

    def get_status(self) -> dict[int, Any]:
        return self._call("get_status")


class BusCCB:
    """The ``ccb`` virtual device: client control broadcasts on the ``ccb`` stream."""

    def __init__(self, bus: WorkerBus):
        self._bus = bus
        self._epoch = random.getrandbits(62)
        self._seq = 0

    def issue(self, service: str, *args: Any, **kwargs: Any) -> None:
        self._seq += 1
        body, buffers = pack([self._epoch, self._seq,
                              [{"service": service, "args": list(args), "kwargs": kwargs}]])
        self._bus.publish([stream_topic("ccb"), VERSION, body, *buffers])


class BusDatasetBackend:
    """The master's datasets, for a run's DatasetManager: reads are calls, updates are
    one-way messages (they keep their order)."""

    def __init__(self, bus: WorkerBus):
        self._bus = bus

    def _read(self, method: str, key: str) -> Any:
        try:
            return self._bus.call("datasets", method, key)
        except NoSuchService:
            raise KeyError(f"dataset {key!r}: the master has no dataset service") from None

    def get(self, key: str) -> Any:
        return self._read("get", key)

    def get_metadata(self, key: str) -> dict[str, Any]:
        return self._read("get_metadata", key)

    def update(self, mod: dict[str, Any]) -> None:
        self._bus.send("datasets", "update", mod)

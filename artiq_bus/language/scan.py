"""Scan objects: re-iterable sequences of values, and their ``describe()`` dicts.

A scan is chosen in the dashboard and arrives in ``expid["arguments"]`` as the dict its
``describe()`` returns (``{"ty": "RangeScan", "start": ..., ...}``); the
:class:`~artiq_bus.language.processors.Scannable` processor turns it back into a scan.
Randomised scans shuffle once, at construction, with ``random.Random(seed)``.

:class:`MultiScanManager` iterates the Cartesian product of several named scans.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

__all__ = ["ScanObject", "NoScan", "RangeScan", "CenterScan", "ExplicitScan", "ScanPoint",
           "MultiScanManager", "SCAN_TYPES"]

logger = logging.getLogger(__name__)


class ScanObject:
    """A finite, re-iterable sequence of scan values."""

    sequence: list[Any]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.sequence)

    def __len__(self) -> int:
        return len(self.sequence)

    def describe(self) -> dict[str, Any]:
        """The scan as its wire dict ``{"ty": <class name>, <parameters>}``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = {k: v for k, v in self.describe().items() if k != "ty"}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def _shuffled(sequence: list[Any], randomize: bool, seed: int | None) -> list[Any]:
    if randomize:
        random.Random(seed).shuffle(sequence)
    return sequence


class NoScan(ScanObject):
    """One value, ``repetitions`` times."""

    def __init__(self, value: Any, repetitions: int = 1) -> None:
        self.value = value
        self.repetitions = repetitions
        self.sequence = [value] * repetitions

    def describe(self) -> dict[str, Any]:
        return {"ty": "NoScan", "value": self.value, "repetitions": self.repetitions}


class RangeScan(ScanObject):
    """``npoints`` evenly spaced values from ``start`` to ``stop``, both included."""

    def __init__(self, start: float, stop: float, npoints: int, randomize: bool = False,
                 seed: int | None = None) -> None:
        self.start = start
        self.stop = stop
        self.npoints = npoints
        self.randomize = randomize
        self.seed = seed
        self.sequence = _shuffled(self._points(), randomize, seed)

    def _points(self) -> list[Any]:
        if self.npoints <= 0:
            return []
        if self.npoints == 1:
            return [self.start]
        step = (self.stop - self.start) / (self.npoints - 1)
        return [self.start + i * step for i in range(self.npoints)]

    def describe(self) -> dict[str, Any]:
        return {"ty": "RangeScan", "start": self.start, "stop": self.stop,
                "npoints": self.npoints, "randomize": self.randomize, "seed": self.seed}


class CenterScan(ScanObject):
    """Values around ``center`` within ``span``, ``step`` apart, nearest first.

    Order: center, center−step, center+step, center−2·step, center+2·step, …
    """

    def __init__(self, center: float, span: float, step: float, randomize: bool = False,
                 seed: int | None = None) -> None:
        self.center = center
        self.span = span
        self.step = step
        self.randomize = randomize
        self.seed = seed
        self.sequence = _shuffled(self._points(), randomize, seed)

    def _points(self) -> list[Any]:
        if self.step == 0:
            return []
        per_side = int(self.span / (2 * self.step))
        if per_side < 0:
            return []
        points = [self.center]
        for i in range(1, per_side + 1):
            points += [self.center - i * self.step, self.center + i * self.step]
        return points

    def describe(self) -> dict[str, Any]:
        return {"ty": "CenterScan", "center": self.center, "step": self.step,
                "span": self.span, "randomize": self.randomize, "seed": self.seed}


class ExplicitScan(ScanObject):
    """The values given, in order."""

    def __init__(self, sequence: Iterable[Any]) -> None:
        self.sequence = list(sequence)

    def describe(self) -> dict[str, Any]:
        return {"ty": "ExplicitScan", "sequence": list(self.sequence)}


#: Scan classes by their ``describe()["ty"]`` name.
SCAN_TYPES: dict[str, type[ScanObject]] = {
    cls.__name__: cls for cls in (NoScan, RangeScan, CenterScan, ExplicitScan)
}


class ScanPoint:
    """One point of a :class:`MultiScanManager`: one attribute per scan name."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScanPoint) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"ScanPoint({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class MultiScanManager:
    """All combinations of several named scans; the first scan varies slowest.

    ``MultiScanManager(("a", scan_a), ("b", scan_b))`` yields ``ScanPoint(a=…, b=…)``.
    """

    def __init__(self, *scans: tuple[str, Sequence[Any] | ScanObject]) -> None:
        names = [name for name, _ in scans]
        if len(set(names)) != len(names):
            raise ValueError(f"scan names must be distinct, got {names}")
        self.names = names
        self.scans = [scan for _, scan in scans]

    def __iter__(self) -> Iterator[ScanPoint]:
        for values in itertools.product(*self.scans):
            yield ScanPoint(**dict(zip(self.names, values)))

    def __len__(self) -> int:
        count = 1
        for scan in self.scans:
            count *= len(scan)
        return count

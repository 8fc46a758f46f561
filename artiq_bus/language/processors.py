"""Argument processors: how an experiment declares an argument, and how values arrive.

Each processor has three faces:

* ``describe()`` — the dict (``procdesc``) the dashboard uses to draw an editor;
* ``default()`` — the value when none is supplied (:class:`DefaultMissing` if none);
* ``process(x)`` — the value supplied in ``expid["arguments"]`` turned into the one the
  experiment sees (``NumberValue`` → int or float, ``Scannable`` → a scan object, ...).

Defaults go through ``process()`` at construction, so a bad default fails early.
Numbers are always SI: ``unit``/``scale`` only tell the UI how to display them.
"""

from __future__ import annotations

import enum
import inspect
import logging
import warnings
from collections.abc import Iterable
from typing import Any

from .. import pyon
from . import units
from .errors import DefaultMissing
from .scan import SCAN_TYPES, ScanObject

__all__ = ["NoDefault", "DefaultMissing", "ArgProcessor", "PYONValue", "BooleanValue",
           "EnumerationValue", "NumberType", "NumberValue", "StringValue", "Scannable",
           "scale_for_unit"]

logger = logging.getLogger(__name__)


class NoDefault:
    """Marker (used as the class itself) for "no default value given"."""


def scale_for_unit(unit: str) -> float:
    """The display scale of ``unit``: 1.0 for no unit, else the unit constant."""
    if unit == "":
        return 1.0
    try:
        return units.UNITS[unit]
    except KeyError:
        raise KeyError(f"Unit {unit} is unknown, you must specify the scale manually") \
            from None


def _precision(precision: int, ndecimals: int | None) -> int:
    if ndecimals is None:
        return precision
    warnings.warn("'ndecimals' is deprecated, use 'precision' instead",
                  DeprecationWarning, stacklevel=3)
    return ndecimals


class ArgProcessor:
    """Base of the processors that take one default value."""

    def __init__(self, default: Any = NoDefault) -> None:
        if default is not NoDefault:
            if isinstance(default, list):
                raise NotImplementedError(
                    f"{type(self).__name__} does not take a list as default")
            self.default_value = self.process(default)

    def has_default(self) -> bool:
        """Whether a default was given."""
        return hasattr(self, "default_value")

    def default(self) -> Any:
        """The default value; :class:`DefaultMissing` if none was given."""
        if not self.has_default():
            raise DefaultMissing(f"{type(self).__name__} has no default value")
        return self.default_value

    def process(self, x: Any) -> Any:
        """The value the experiment sees for supplied value ``x``."""
        return x

    def describe(self) -> dict[str, Any]:
        """The ``procdesc`` dict: ``{"ty": <class name>, "default"?: ...}``."""
        desc: dict[str, Any] = {"ty": type(self).__name__}
        if self.has_default():
            desc["default"] = self.default_value
        return desc


class PYONValue(ArgProcessor):
    """Any PYON-encodable value; supplied as PYON text."""

    def __init__(self, default: Any = NoDefault) -> None:
        if default is not NoDefault:
            pyon.encode(default)  # fail now, not when the dashboard asks
            self.default_value = default

    def process(self, x: Any) -> Any:
        if not isinstance(x, str):
            raise TypeError(f"PYONValue expects PYON text, got {type(x).__name__}")
        return pyon.decode(x)

    def describe(self) -> dict[str, Any]:
        desc: dict[str, Any] = {"ty": "PYONValue"}
        if self.has_default():
            desc["default"] = pyon.encode(self.default_value)
        return desc


class BooleanValue(ArgProcessor):
    """A bool; anything else (including 0 and 1) is refused."""

    def process(self, x: Any) -> bool:
        if type(x) is not bool:
            raise ValueError(f"BooleanValue expects True or False, got {x!r}")
        return x


class EnumerationValue(ArgProcessor):
    """One string out of ``choices``."""

    def __init__(self, choices: Iterable[str], default: Any = NoDefault,
                 quickstyle: bool = False) -> None:
        self.choices = list(choices)
        self.quickstyle = quickstyle
        super().__init__(default)

    def process(self, x: Any) -> Any:
        if x not in self.choices:
            raise ValueError(f"{x!r} is not one of the choices {self.choices}")
        return x

    def describe(self) -> dict[str, Any]:
        desc = super().describe()
        desc["choices"] = list(self.choices)
        desc["quickstyle"] = self.quickstyle
        return desc


class StringValue(ArgProcessor):
    """A string, passed through unchanged."""


class NumberType(str, enum.Enum):
    """The ``type`` option of :class:`NumberValue`."""

    AUTO = "auto"
    FLOAT = "float"
    INT = "int"


class NumberValue(ArgProcessor):
    """A number in SI units, an ``int`` in integer mode and a ``float`` otherwise.

    Integer mode: ``type="int"``, or ``type="auto"`` with ``precision=0``, an integer
    ``step`` and ``scale == 1``.  ``min``/``max`` guide the UI; they are not enforced.
    """

    def __init__(self, default: Any = NoDefault, unit: str = "", *,
                 scale: float | None = None, step: float | None = None,
                 min: float | None = None, max: float | None = None,  # noqa: A002
                 precision: int = 2, type: str = "auto",  # noqa: A002
                 ndecimals: int | None = None) -> None:
        self.unit = unit
        self.scale = scale_for_unit(unit) if scale is None else scale
        self.step = self.scale / 10 if step is None else step
        self.min = min
        self.max = max
        self.precision = _precision(precision, ndecimals)
        self.type = self._number_type(type)
        if self.type is NumberType.INT and not self._int_compatible():
            raise ValueError("type='int' needs precision=0, an integer step and scale 1")
        super().__init__(default)

    @staticmethod
    def _number_type(name: str) -> NumberType:
        try:
            return NumberType(name)
        except ValueError:
            raise TypeError(f"NumberValue type must be 'auto', 'float' or 'int', "
                            f"not {name!r}") from None

    def _int_compatible(self) -> bool:
        return self.precision == 0 and int(self.step) == self.step and self.scale == 1

    def _is_int(self) -> bool:
        return self.type is NumberType.INT or (self.type is NumberType.AUTO
                                               and self._int_compatible())

    def process(self, x: Any) -> int | float:
        return int(x) if self._is_int() else float(x)

    def describe(self) -> dict[str, Any]:
        desc = super().describe()
        desc.update(unit=self.unit, scale=self.scale, step=self.step, min=self.min,
                    max=self.max, precision=self.precision, type=self.type.value)
        return desc


class Scannable(ArgProcessor):
    """A scan; the default may be a list of scans (the first one is selected, the
    others pre-fill the other scan types in the dashboard)."""

    def __init__(self, default: Any = NoDefault, unit: str = "", *,
                 scale: float | None = None, global_step: float | None = None,
                 global_min: float | None = None, global_max: float | None = None,
                 precision: int = 2, ndecimals: int | None = None) -> None:
        self.unit = unit
        self.scale = scale_for_unit(unit) if scale is None else scale
        self.global_step = self.scale / 10 if global_step is None else global_step
        self.global_min = global_min
        self.global_max = global_max
        self.precision = _precision(precision, ndecimals)
        if default is not NoDefault:
            self.default_values = self._scan_list(default)

    @staticmethod
    def _scan_list(default: Any) -> list[ScanObject]:
        scans = list(default) if isinstance(default, (list, tuple)) else [default]
        if not scans or not all(isinstance(scan, ScanObject) for scan in scans):
            raise TypeError("Scannable defaults must be scan objects")
        return scans

    def has_default(self) -> bool:
        return hasattr(self, "default_values")

    def default(self) -> ScanObject:
        if not self.has_default():
            raise DefaultMissing("Scannable has no default value")
        return self.default_values[0]

    def process(self, x: Any) -> ScanObject:
        """A scan object from its wire dict; keys the scan type does not take are
        ignored (the dashboard sends the parameters of every scan type)."""
        if not isinstance(x, dict) or "ty" not in x:
            raise TypeError(f"Scannable expects a dict with a 'ty' key, got {x!r}")
        try:
            cls = SCAN_TYPES[x["ty"]]
        except (KeyError, TypeError):
            raise ValueError(f"unknown scan type {x['ty']!r}") from None
        params = inspect.signature(cls).parameters
        return cls(**{key: value for key, value in x.items() if key in params})

    def describe(self) -> dict[str, Any]:
        desc: dict[str, Any] = {"ty": "Scannable"}
        if self.has_default():
            desc["default"] = [scan.describe() for scan in self.default_values]
        desc.update(unit=self.unit, scale=self.scale, global_step=self.global_step,
                    global_min=self.global_min, global_max=self.global_max,
                    precision=self.precision)
        return desc

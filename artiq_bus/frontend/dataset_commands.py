"""``artiq_client``'s dataset commands: ``set-dataset``, ``del-dataset``, ``show datasets``.

Values are PYON on the command line, as in ARTIQ; a number or array is multiplied by
the scale (``--scale``, else the unit's) so that the master holds SI values.
``show datasets`` prints ARTIQ's table (Dataset, Persistent, Value) once.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import pyon
from ..language.units import UNITS
from .common import UsageError
from .tables import format_table

if TYPE_CHECKING:
    from .artiq_client import Session

__all__ = ["add_dataset_commands", "format_datasets", "short_format", "scale_from_metadata"]

#: Strings longer than this are elided in the table.
STRING_WIDTH = 50


def add_dataset_commands(commands: Any) -> None:
    """The ``set-dataset`` and ``del-dataset`` subcommands."""
    setter = commands.add_parser("set-dataset", help="add or modify a dataset")
    setter.add_argument("name", metavar="NAME", help="name of the dataset")
    setter.add_argument("value", metavar="VALUE", help="value in PYON format")
    setter.add_argument("--unit", default=None, help="physical unit of the value")
    setter.add_argument("--scale", default=None, type=float,
                        help="factor to multiply the value by (default: the unit's)")
    setter.add_argument("--precision", default=None, type=int,
                        help="decimal places to display")
    persist = setter.add_mutually_exclusive_group()
    persist.add_argument("-p", "--persist", action="store_const", const=True, default=None,
                         dest="persist", help="make the dataset persistent")
    persist.add_argument("-n", "--no-persist", action="store_const", const=False,
                         dest="persist", help="make the dataset non-persistent")
    setter.set_defaults(func=_action_set_dataset)

    deleter = commands.add_parser("del-dataset", help="delete a dataset")
    deleter.add_argument("name", metavar="NAME", help="name of the dataset")
    deleter.set_defaults(func=_action_del_dataset)


def scale_from_metadata(metadata: dict[str, Any]) -> float:
    """The display scale: explicit ``scale``, else the unit's, else 1 (ARTIQ's rule)."""
    if metadata.get("scale") is not None:
        return float(metadata["scale"])
    return UNITS.get(metadata.get("unit") or "", 1.0)


def _metadata(args: argparse.Namespace) -> dict[str, Any]:
    return {name: value for name, value in (("unit", args.unit), ("scale", args.scale),
                                            ("precision", args.precision))
            if value is not None}


def _value(text: str, scale: float) -> Any:
    try:
        value = pyon.decode(text)
    except ValueError:
        hint = "" if text[:1] in "\"'" else " (a string needs quotes: '\"text\"')"
        raise UsageError(f"{text!r} is not a PYON value{hint}") from None
    numeric = isinstance(value, (int, float, np.ndarray)) and not isinstance(value, bool)
    if scale != 1 and numeric:
        value = value * scale
    return value


def _action_set_dataset(session: "Session") -> None:
    args = session.args
    metadata = _metadata(args)
    value = _value(args.value, scale_from_metadata(metadata))
    session.call("datasets", "set", args.name, value, args.persist, metadata)


def _action_del_dataset(session: "Session") -> None:
    session.call("datasets", "delete", session.args.name)


# -- show datasets ------------------------------------------------------------------------

def _number(value: Any, scale: float, precision: int | None) -> str:
    scaled = value / scale if scale != 1 else value
    if isinstance(scaled, (int, np.integer)):
        return str(scaled)
    if isinstance(scaled, (complex, np.complexfloating)):
        return str(scaled)
    if not math.isfinite(scaled):
        return str(float(scaled))
    return str(np.format_float_positional(scaled, precision=precision,
                                          unique=precision is None, trim="-"))


def short_format(value: Any, metadata: dict[str, Any] | None = None) -> str:
    """A one-line rendering of a dataset's value for tables (ARTIQ's ``short_format``)."""
    metadata = metadata or {}
    unit = metadata.get("unit") or ""
    suffix = f" {unit}" if unit else ""
    scale, precision = scale_from_metadata(metadata), metadata.get("precision")
    if value is None or isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, float, complex, np.number)):
        return _number(value, scale, precision) + suffix
    if isinstance(value, str):
        text = value if len(value) <= STRING_WIDTH else value[:STRING_WIDTH - 3] + "..."
        return repr(text)
    if isinstance(value, np.ndarray):
        shown = value / scale if scale != 1 and value.dtype.kind in "iufc" else value
        text = np.array2string(shown, threshold=4, precision=precision,
                               max_line_width=10**6)
        return text.replace("\n", "") + suffix
    if isinstance(value, (list, tuple, dict)):
        return f"{type(value).__name__} ({len(value)})"
    text = str(value)
    return text if len(text) <= STRING_WIDTH else text[:STRING_WIDTH - 3] + "..."


def format_datasets(struct: dict[str, Any]) -> str:
    """ARTIQ's table: Dataset, Persistent (Y/N), Value."""
    return format_table(("Dataset", "Persistent", "Value"),
                        [(key, "Y" if persist else "N", short_format(value, metadata))
                         for key, (persist, value, metadata) in sorted(struct.items())])

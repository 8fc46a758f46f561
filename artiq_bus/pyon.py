"""PYON: the text format ARTIQ users read and write (values on the command line, files).

Version 2 *is* JSON, kept on one line.  Plain JSON values (``None``, bools, numbers,
strings, lists, dicts with string keys) encode exactly as ``json.dumps`` with compact
separators would.  Types JSON lacks are wrapped in a one-key object::

    {"__jsonclass__": [NAME, [ARGS...]]}

================  =============================================================
NAME              ARGS
================  =============================================================
``tuple``         ``[items]``
``dict``          ``[[[key, value], ...]]`` (a dict with any non-string key)
``OrderedDict``   ``[[[key, value], ...]]``
``complex``       ``real, imag``
``bytes``         ``base64 text``
``set``           ``[items]``
``slice``         ``start, stop, step``
``Fraction``      ``numerator, denominator``
``nparray``       ``[shape], dtype, base64 of the C-ordered data``
``npscalar``      ``dtype, base64 of the value's bytes``
================  =============================================================

``dtype`` is ``numpy.dtype.str`` (``"<f8"``), or the field list (``dtype.descr``) for
structured dtypes.  NaN and infinities use JSON's non-strict literals ``NaN``,
``Infinity``, ``-Infinity``.

Version 1 (legacy files) was Python literal syntax plus a few constructors.  It is still
decoded, by walking the syntax tree and accepting only literals and the known
constructors: the text is never evaluated, so a file cannot run code.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_replace

__all__ = ["PyonError", "encode", "decode", "store_file", "load_file"]

logger = logging.getLogger(__name__)

_CLASS_KEY = "__jsonclass__"


class PyonError(ValueError):
    """Text that is not PYON, or a value PYON cannot carry faithfully."""


# --- encoding ----------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _dtype_desc(dtype: np.dtype[Any]) -> Any:
    """``dtype.str``, or the field list for structured dtypes (whose ``str`` is lossy)."""
    if dtype.fields is not None:
        return _lists(dtype.descr)
    return dtype.str


def _lists(value: Any) -> Any:
    """Tuples turned into lists, recursively (JSON has no tuples)."""
    if isinstance(value, (list, tuple)):
        return [_lists(item) for item in value]
    return value


def _jsonclass(name: str, *args: Any) -> dict[str, Any]:
    return {_CLASS_KEY: [name, list(args)]}


def _pairs(mapping: dict[Any, Any]) -> list[list[Any]]:
    return [[_wrap(key), _wrap(value)] for key, value in mapping.items()]


def _wrap_array(array: np.ndarray[Any, Any]) -> dict[str, Any]:
    if array.dtype.hasobject:
        raise TypeError("PYON cannot encode numpy arrays of dtype object")
    data = np.ascontiguousarray(array).tobytes()
    return _jsonclass("nparray", list(array.shape), _dtype_desc(array.dtype), _b64(data))


def _wrap_scalar(scalar: np.generic) -> dict[str, Any]:
    if scalar.dtype.hasobject:
        raise TypeError("PYON cannot encode numpy scalars of dtype object")
    return _jsonclass("npscalar", _dtype_desc(scalar.dtype), _b64(scalar.tobytes()))


def _wrap_dict(value: dict[Any, Any]) -> dict[Any, Any]:
    if isinstance(value, OrderedDict):
        return _jsonclass("OrderedDict", _pairs(value))
    if not all(isinstance(key, str) for key in value):
        return _jsonclass("dict", _pairs(value))
    if _CLASS_KEY in value:
        raise PyonError(f"PYON cannot encode a dict with the reserved key {_CLASS_KEY!r}")
    return {key: _wrap(item) for key, item in value.items()}


def _wrap(value: Any) -> Any:
    """``value`` as plain JSON values, extended types wrapped (see the module doc)."""
    if isinstance(value, np.generic):  # first: np.float64, np.str_ subclass float, str
        return _wrap_scalar(value)
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, list):
        return [_wrap(item) for item in value]
    if isinstance(value, dict):
        return _wrap_dict(value)
    if isinstance(value, np.ndarray):
        return _wrap_array(value)
    return _wrap_other(value)


def _wrap_other(value: Any) -> dict[str, Any]:
    if isinstance(value, tuple):
        return _jsonclass("tuple", [_wrap(item) for item in value])
    if isinstance(value, complex):
        return _jsonclass("complex", value.real, value.imag)
    if isinstance(value, bytes):
        return _jsonclass("bytes", _b64(value))
    if isinstance(value, set):
        return _jsonclass("set", [_wrap(item) for item in value])
    if isinstance(value, slice):
        return _jsonclass("slice", _wrap(value.start), _wrap(value.stop), _wrap(value.step))
    if isinstance(value, Fraction):
        return _jsonclass("Fraction", value.numerator, value.denominator)
    raise TypeError(f"PYON cannot encode values of type {type(value).__name__}")


def encode(obj: Any, pretty: bool = False) -> str:
    """``obj`` as PYON v2 text: one line, or indented by 4 with ``pretty``.

    Raises TypeError for unsupported types and :class:`PyonError` for a dict holding
    the reserved key ``"__jsonclass__"``.
    """
    wrapped = _wrap(obj)
    if pretty:
        return json.dumps(wrapped, indent=4)
    return json.dumps(wrapped, separators=(",", ":"))


# --- decoding ----------------------------------------------------------------------

def _dtype(desc: Any) -> np.dtype[Any]:
    if isinstance(desc, list):
        return np.dtype([tuple(_tuples(field)) for field in desc])
    return np.dtype(desc)


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _raw(data: str | bytes) -> bytes:
    return base64.b64decode(data, validate=True)


def _nparray(shape: list[int] | tuple[int, ...], dtype: Any,
             data: str | bytes) -> np.ndarray[Any, Any]:
    kind = _dtype(dtype)
    if kind.hasobject:
        raise PyonError("PYON arrays cannot have dtype object")
    flat = np.frombuffer(_raw(data), dtype=kind) if kind.itemsize else np.zeros(0, kind)
    return flat.reshape(tuple(shape)).copy()


def _npscalar(dtype: Any, data: str | bytes) -> np.generic:
    kind = _dtype(dtype)
    if kind.hasobject:
        raise PyonError("PYON scalars cannot have dtype object")
    if kind.itemsize == 0:
        return kind.type()  # type: ignore[no-any-return]
    return np.frombuffer(_raw(data), dtype=kind)[0]  # type: ignore[no-any-return]


_CONSTRUCTORS: dict[str, Callable[..., Any]] = {
    "tuple": tuple,
    "dict": dict,
    "OrderedDict": OrderedDict,
    "complex": complex,
    "bytes": _raw,
    "set": set,
    "slice": slice,
    "Fraction": Fraction,
    "nparray": _nparray,
    "npscalar": _npscalar,
}


def _unwrap(obj: dict[str, Any]) -> Any:
    """json object hook: rebuild one wrapped value (its arguments are already decoded)."""
    if len(obj) != 1 or _CLASS_KEY not in obj:
        return obj
    spec = obj[_CLASS_KEY]
    if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[1], list)):
        raise PyonError(f"malformed {_CLASS_KEY} value: {spec!r}")
    name, args = spec
    try:
        constructor = _CONSTRUCTORS[name]
    except (KeyError, TypeError):
        raise PyonError(f"unknown PYON class {name!r}") from None
    try:
        return constructor(*args)
    except (TypeError, ValueError) as exc:
        raise PyonError(f"bad arguments for PYON class {name!r}: {exc}") from exc


def decode(text: str | bytes) -> Any:
    """The value in PYON ``text``: v2 (JSON) first, then legacy v1 literal syntax.

    Raises :class:`PyonError` when the text is neither.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        return json.loads(text, object_hook=_unwrap)
    except json.JSONDecodeError as exc:
        v2_error = exc
    except RecursionError:
        raise PyonError("PYON text nested too deeply") from None
    try:
        return _decode_v1(text)
    except PyonError as exc:
        raise PyonError(f"not PYON: {v2_error}; as v1: {exc}") from None


# --- v1: a literal-only walk over the Python syntax tree -------------------------

_V1_NAMES: dict[str, Any] = {
    "null": None, "true": True, "false": False, "inf": float("inf"), "nan": float("nan"),
}
_V1_CALLS: dict[str, Callable[..., Any]] = {
    "Fraction": Fraction, "OrderedDict": OrderedDict, "nparray": _nparray,
    "npscalar": _npscalar, "slice": slice, "set": set, "tuple": tuple,
}
_NUMBER = (int, float, complex)


def _decode_v1(text: str) -> Any:
    try:
        tree = ast.parse(text.strip(), mode="eval")
        return _v1_value(tree.body)
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise PyonError(f"{type(exc).__name__}: {exc}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, PyonError):
            raise
        raise PyonError(f"{type(exc).__name__}: {exc}") from None


def _v1_value(node: ast.expr) -> Any:
    """The value of one literal node; anything that is not a literal is refused."""
    if isinstance(node, ast.Constant) and node.value is not Ellipsis:
        return node.value
    if isinstance(node, ast.Name) and node.id in _V1_NAMES:
        return _V1_NAMES[node.id]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_v1_value(item) for item in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise PyonError("'**' is not allowed in PYON")
        return {_v1_value(k): _v1_value(v)  # type: ignore[arg-type]
                for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _v1_signed(node)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        return _v1_complex(node)
    if isinstance(node, ast.Call):
        return _v1_call(node)
    raise PyonError(f"{type(node).__name__} is not allowed in PYON")


def _v1_number(node: ast.expr) -> Any:
    value = _v1_value(node)
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        raise PyonError("arithmetic is only allowed on numbers in PYON")
    return value


def _v1_signed(node: ast.UnaryOp) -> Any:
    value = _v1_number(node.operand)
    return -value if isinstance(node.op, ast.USub) else value


def _v1_complex(node: ast.BinOp) -> complex:
    """``a + bj`` / ``a - bj``: the only arithmetic PYON v1 has, for complex numbers."""
    left, right = _v1_number(node.left), _v1_number(node.right)
    if not isinstance(right, complex) or isinstance(left, complex):
        raise PyonError("only 'real ± imaginary' arithmetic is allowed in PYON")
    return left + right if isinstance(node.op, ast.Add) else left - right


def _v1_call(node: ast.Call) -> Any:
    if not isinstance(node.func, ast.Name) or node.func.id not in _V1_CALLS:
        raise PyonError("only PYON constructors may be called")
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise PyonError("PYON constructors take positional arguments only")
    args = [_v1_value(arg) for arg in node.args]
    return _V1_CALLS[node.func.id](*args)


# --- files ---------------------------------------------------------------------------

def store_file(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented PYON to ``path`` atomically.

    The text goes to a temporary file beside ``path``, is flushed to disk, then
    replaces ``path`` in one step: readers see the old or the new file, never a part.
    """
    text = encode(obj, pretty=True)
    with atomic_replace(path) as temp:
        temp.write_text(text + "\n", encoding="utf-8")


def load_file(path: str | os.PathLike[str]) -> Any:
    """The value stored in the PYON file at ``path`` (v2 or v1)."""
    return decode(Path(path).read_text(encoding="utf-8"))

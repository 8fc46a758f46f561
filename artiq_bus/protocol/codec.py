"""Message bodies: msgpack with extension types for what physics code sends.

A body is one msgpack object.  Values msgpack cannot express natively travel as
extension types (type code: payload, where the payload is itself msgpack):

====  ===========  ============================================================
code  Python       payload
====  ===========  ============================================================
1     ndarray      ``[dtype, shape, data]``; ``data`` is the raw C-order bytes, or
                   an integer *n*: the bytes are extra frame number *n* after the
                   body (large arrays travel zero-copy in their own frame)
2     numpy scalar ``[dtype, data]`` with the scalar's raw bytes
3     tuple        the items as an array
4     complex      ``[real, imag]`` (two float64)
5     slice        ``[start, stop, step]``
====  ===========  ============================================================

``dtype`` is numpy's ``dtype.str`` (``"<f8"``, ``"|S10"``, ``"|b1"``), or for
structured dtypes numpy's ``dtype.descr`` list.  Arrays of Python objects are refused:
they have no portable byte layout (and HDF5 cannot hold them either).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from .errors import EncodeError, ProtocolError

__all__ = ["pack", "pack_into", "unpack", "body_ends", "freeze_buffers", "ExtCode",
           "OUT_OF_BAND_MIN_BYTES"]


class ExtCode:
    """msgpack extension type codes (see the module docstring)."""

    NDARRAY = 1
    NPSCALAR = 2
    TUPLE = 3
    COMPLEX = 4
    SLICE = 5


#: Arrays at least this large travel in their own frame, without a copy.
OUT_OF_BAND_MIN_BYTES = 64 * 1024


def _dtype_to_wire(dtype: np.dtype) -> Any:
    if dtype.hasobject:
        raise EncodeError("arrays of Python objects cannot be sent; use a numeric, "
                          "bytes or str dtype")
    return dtype.descr if dtype.fields is not None else dtype.str


def _descr_entry(entry: Sequence[Any]) -> tuple[Any, ...]:
    name, fmt, *shape = entry
    if isinstance(name, list):  # (title, name)
        name = tuple(name)
    if isinstance(fmt, list):
        fmt = [_descr_entry(e) for e in fmt]
    return (name, fmt, *(tuple(s) if isinstance(s, list) else s for s in shape))


def _dtype_from_wire(wire: Any) -> np.dtype:
    try:
        if isinstance(wire, str):
            dtype = np.dtype(wire)
        elif isinstance(wire, list):
            # descr_to_dtype drops descr's unnamed padding fields (aligned dtypes)
            dtype = np.lib.format.descr_to_dtype([_descr_entry(e) for e in wire])
        else:
            raise TypeError(type(wire).__name__)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad dtype {wire!r:.100}: {exc}") from None
    if dtype.hasobject:
        raise ProtocolError("object dtype on the wire")
    return dtype


#: Types whose subclasses travel as the type itself.
_PLAIN_BASES: tuple[type[Any], ...] = (dict, list, str, bytes, int, float)


def _default(buffers: list[Any], obj: Any) -> Any:
    recurse = functools.partial(_packb, buffers)
    if isinstance(obj, np.ndarray):
        dtype = _dtype_to_wire(obj.dtype)
        array = np.ascontiguousarray(obj)
        if array.nbytes >= OUT_OF_BAND_MIN_BYTES:
            if array.ndim:  # (an ndarray has the buffer protocol; its stubs do not say so)
                buffers.append(memoryview(array).cast("B"))  # type: ignore[arg-type]
            else:
                buffers.append(array.tobytes())
            data: Any = len(buffers) - 1
        else:
            data = array.tobytes()
        return msgpack.ExtType(ExtCode.NDARRAY, recurse([dtype, list(obj.shape), data]))
    if isinstance(obj, np.generic):
        return msgpack.ExtType(
            ExtCode.NPSCALAR, recurse([_dtype_to_wire(obj.dtype), obj.tobytes()]))
    if isinstance(obj, tuple):
        return msgpack.ExtType(ExtCode.TUPLE, recurse(list(obj)))
    if isinstance(obj, complex):
        return msgpack.ExtType(ExtCode.COMPLEX, recurse([obj.real, obj.imag]))
    if isinstance(obj, slice):
        return msgpack.ExtType(ExtCode.SLICE, recurse([obj.start, obj.stop, obj.step]))
    # strict_types sends subclasses here; carry them as their base type.
    for base in _PLAIN_BASES:
        if isinstance(obj, base):
            # str() of a (str, Enum) member is "Class.NAME", not its value
            return str.__str__(obj) if base is str else base(obj)
    raise EncodeError(f"cannot send a value of type {type(obj).__qualname__}")


def _default_here(obj: Any) -> Any:
    return _default(_state.buffers, obj)


class _PackState(threading.local):
    """Each thread's packers, one per nesting depth (an extension's payload is packed
    while its container is being packed, so one packer cannot serve both), and the
    out-of-band buffers of the body being packed.  Packers are reused: making one per
    call costs more than packing a small update."""

    def __init__(self) -> None:
        self.packers: list[msgpack.Packer] = [_packer()]
        self.depth = 0
        self.buffers: list[Any] = []


def _packer() -> msgpack.Packer:
    return msgpack.Packer(default=_default_here, strict_types=True, use_bin_type=True)


_state = _PackState()


def _packb(buffers: list[Any], obj: Any) -> bytes:
    state = _state
    depth = state.depth
    if depth == 0:  # a body (the common case): as few steps as can be
        state.buffers, state.depth = buffers, 1
        try:
            return state.packers[0].pack(obj)
        except EncodeError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot encode value: {exc}") from None
        finally:
            state.buffers, state.depth = _NO_BUFFERS, 0
    return _packb_nested(state, depth, obj)


def _packb_nested(state: _PackState, depth: int, obj: Any) -> bytes:
    """An extension's payload, packed while its container is being packed."""
    if len(state.packers) <= depth:
        state.packers.append(_packer())
    state.depth = depth + 1
    try:
        return state.packers[depth].pack(obj)
    finally:
        state.depth = depth


#: What ``_state.buffers`` holds between bodies (never appended to: no body is packed).
_NO_BUFFERS: list[Any] = []


def pack_into(buffers: list[Any], obj: Any) -> bytes:
    """Encode ``obj`` as a body whose out-of-band frames are appended to ``buffers``.

    Frame numbers in the body count from the start of ``buffers``, so several bodies
    packed into one list can travel in one message behind their common frames.
    """
    return _packb(buffers, obj)


def pack(obj: Any) -> tuple[bytes, list[Any]]:
    """Encode ``obj`` as a body and the out-of-band buffers that follow it as frames."""
    buffers: list[Any] = []
    return _packb(buffers, obj), buffers


def freeze_buffers(buffers: Sequence[Any], start: int = 0) -> None:
    """Make the arrays behind ``buffers[start:]`` (out-of-band frames of a packed body)
    read-only.  ZeroMQ sends such a frame from the array's own memory, later and from
    another thread: an owner that keeps the array must not change it meanwhile, and an
    array that refuses writes makes any attempt loud (or, through ``apply_update``,
    copies it first)."""
    for buffer in buffers[start:]:
        array = buffer.obj if isinstance(buffer, memoryview) else None
        if isinstance(array, np.ndarray):
            array.flags.writeable = False


def _array_from_wire(buffers: Sequence[Any], dtype_wire: Any, shape: Any,
                     data: Any) -> np.ndarray:
    dtype = _dtype_from_wire(dtype_wire)
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ProtocolError(f"bad array shape {shape!r:.100}")
    if isinstance(data, int):
        if not 0 <= data < len(buffers):
            raise ProtocolError(f"array refers to missing frame {data}")
        buf = buffers[data]
        raw: Any = buf.buffer if hasattr(buf, "buffer") else buf
        writable = not memoryview(raw).readonly
    elif isinstance(data, bytes):
        raw, writable = data, False
    else:
        raise ProtocolError("array data is neither bytes nor a frame number")
    count = int(np.prod(shape, dtype=np.int64))
    if memoryview(raw).nbytes != count * dtype.itemsize:
        raise ProtocolError(f"array of shape {shape} and dtype {dtype} does not match "
                            f"{memoryview(raw).nbytes} bytes")
    array = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    return array if writable else array.copy()


def _ext_hook(buffers: Sequence[Any], code: int, payload: bytes) -> Any:
    inner = _unpackb(buffers, payload)
    try:
        if code == ExtCode.NDARRAY:
            return _array_from_wire(buffers, *inner)
        if code == ExtCode.NPSCALAR:
            dtype_wire, data = inner
            dtype = _dtype_from_wire(dtype_wire)
            if dtype.itemsize == 0 and isinstance(data, bytes):  # np.bytes_(b"")
                return dtype.type()
            return np.frombuffer(data, dtype=dtype, count=1)[0]
        if code == ExtCode.TUPLE:
            return tuple(inner)
        if code == ExtCode.COMPLEX:
            real, imag = inner
            return complex(real, imag)
        if code == ExtCode.SLICE:
            return slice(*inner)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad extension {code} payload: {exc}") from None
    raise ProtocolError(f"unknown extension type {code}")


def _unpackb(buffers: Sequence[Any], body: bytes | memoryview) -> Any:
    try:
        return msgpack.unpackb(body, ext_hook=functools.partial(_ext_hook, buffers),
                               raw=False, strict_map_key=False, use_list=True)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise ProtocolError(f"undecodable body: {type(exc).__name__}: {exc}") from None


def unpack(body: bytes | memoryview, buffers: Sequence[Any] = ()) -> Any:
    """Decode a body and the out-of-band frames that followed it.

    Arrays decoded from out-of-band frames share the frame's memory (no copy).
    """
    return _unpackb(buffers, body)



def body_ends(data: bytes | memoryview, count: int) -> list[int]:
    """Where each of ``count`` bodies packed one after another in ``data`` ends (to
    forward some of them as they are, without packing them again).  Raises
    :class:`ProtocolError` unless ``data`` holds exactly ``count`` of them."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    ends, skip, tell = [], unpacker.skip, unpacker.tell
    try:
        for _ in range(count):
            skip()
            ends.append(tell())
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise ProtocolError(f"undecodable body: {type(exc).__name__}: {exc}") from None
    if tell() != len(data):
        raise ProtocolError(f"{len(data) - tell()} bytes after {count} bodies")
    return ends

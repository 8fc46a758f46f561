"""Publications: what the broker's XPUB socket carries to subscribers.

Frames: ``topic VERSION body *buffers``.  Frame 0 is the topic so that ZeroMQ's prefix
filtering decides what each subscriber receives.  Topics (``\\0`` is a NUL byte):

================================  ==========================================
``struct\\0NAME\\0KEY\\0``          updates of one root key of struct NAME
``control\\0NAME\\0``               the owner's heartbeat for struct NAME
``stream\\0NAME\\0``                a stateless stream (``log``, ``ccb``)
``sync\\0TOKEN``                   the broker's answer to a subscription probe
================================  ==========================================

``KEY`` is the UTF-8 text of a string key or the decimal text of an integer key.  A
subscriber takes one key with the full topic, a dotted folder (``scan.``) with
``struct\\0NAME\\0scan.``, or everything with ``struct\\0NAME\\0``.

Struct update body: ``[epoch, seq, prevs, updates]``
    ``epoch`` identifies one life of the owner (a new value means: resynchronise).
    ``updates`` are update maps (:mod:`.updates`), all for the same root key, numbered
    ``seq, seq+1, …`` in the struct's sequence.  ``prevs`` holds the version, before this
    message, of each *level* the key belongs to: the root (``""``), each dotted folder
    (``"a."``, ``"a.b."``) and the key itself (``"a.b.c"``).  A level's version is the
    struct sequence number of the last update inside it (0 = nothing yet).  A subscriber
    at a level holding version *v* applies a message only if its ``prevs`` entry for that
    level equals *v*, then sets *v* to the message's last sequence number; otherwise an
    update was lost and it resynchronises from a snapshot.
Control body: ``[epoch, seq]``: the owner's struct sequence number now.
Stream body: ``[epoch, seq, items]``: items numbered ``seq, seq+1, …``.
Sync body: empty (``b""``).
"""

from __future__ import annotations

from typing import Any

from .errors import ProtocolError

__all__ = ["struct_topic", "struct_filter_topic", "control_topic", "stream_topic",
           "sync_topic", "key_text", "levels", "filter_level", "msgpack_array_header"]

_SEP = b"\x00"


def key_text(key: Any) -> bytes:
    """The topic text of a struct root key (``str`` or ``int``)."""
    if isinstance(key, str):
        raw = key.encode()
        if _SEP in raw:
            raise ProtocolError("struct keys cannot contain NUL")
        return raw
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key).encode()
    raise ProtocolError(f"struct root keys must be str or int, not {type(key).__name__}")


def struct_topic(struct: str, key: Any) -> bytes:
    return b"struct" + _SEP + struct.encode() + _SEP + key_text(key) + _SEP


def struct_filter_topic(struct: str, key_filter: Any = "") -> bytes:
    """The subscription prefix for a filter: ``""`` (all), ``"folder."`` or one key."""
    base = b"struct" + _SEP + struct.encode() + _SEP
    if key_filter == "" or key_filter is None:
        return base
    if isinstance(key_filter, str) and key_filter.endswith("."):
        return base + key_text(key_filter)
    return base + key_text(key_filter) + _SEP


def control_topic(struct: str) -> bytes:
    return b"control" + _SEP + struct.encode() + _SEP


def stream_topic(stream: str) -> bytes:
    return b"stream" + _SEP + stream.encode() + _SEP


def sync_topic(token: bytes) -> bytes:
    return b"sync" + _SEP + token


def levels(key: Any) -> list[Any]:
    """The levels a root key belongs to, outermost first (see the module docstring)."""
    if not isinstance(key, str):
        return ["", key]
    parts = key.split(".")
    return [""] + [".".join(parts[:n]) + "." for n in range(1, len(parts))] + [key]


def filter_level(key_filter: Any) -> int:
    """Which entry of ``prevs`` a subscriber with this filter checks."""
    if key_filter == "" or key_filter is None:
        return 0
    if isinstance(key_filter, str):
        return key_filter.count(".") + (0 if key_filter.endswith(".") else 1)
    return 1


def msgpack_array_header(n: int) -> bytes:
    """msgpack's header for an array of ``n`` items (to join pre-packed items)."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")

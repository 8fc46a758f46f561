"""Numpy-aware comparison of structs, for the tests and the helper scripts (which
import it as ``compare``, from this directory)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["same", "view", "describe_difference"]


def same(a: Any, b: Any) -> bool:
    """Deep equality that compares numpy arrays and scalars by dtype, shape and value."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b)))
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(same(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b)))
    return type(a) is type(b) and bool(a == b)


def view(struct: dict[Any, Any], key_filter: Any) -> dict[Any, Any]:
    """What a replica with ``key_filter`` holds of ``struct``: everything (``""``), a
    dotted folder (``"scan."``) or one key."""
    if key_filter == "":
        return struct
    if isinstance(key_filter, str) and key_filter.endswith("."):
        return {k: v for k, v in struct.items()
                if isinstance(k, str) and k.startswith(key_filter)}
    return {key_filter: struct[key_filter]} if key_filter in struct else {}


def describe_difference(a: dict[Any, Any], b: dict[Any, Any]) -> str:
    """A short account of how two structs differ (for assertion messages)."""
    lines = [f"keys only left: {sorted(set(a) - set(b))}",
             f"keys only right: {sorted(set(b) - set(a))}"]
    for key in sorted(set(a) & set(b)):
        if not same(a[key], b[key]):
            lines.append(f"{key!r}: {a[key]!r:.200} != {b[key]!r:.200}")
    return "\n".join(lines)

"""Copies of large arrays taken when an experiment broadcasts them, in reused memory.

``set_dataset(key, array, broadcast=True)`` must copy the array before it returns:
the experiment may change it at once, and the update already made must not change
with it.  The copy is what ZeroMQ then sends, without copying it again.  Fresh memory
costs more than the copy itself (the kernel faults in and zeroes every page: about
7 ms for 8 MB on a small VM, against 0.5 ms for the copy), so the buffers are kept
and reused once ZeroMQ has let go of them: an experiment that broadcasts an array of
the same size again and again (a live plot) copies into memory that is already there.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["SnapshotPool"]

#: Free buffers kept for reuse, in bytes at most (buffers in flight do not count).
MAX_FREE_BYTES = 128 * 1024 * 1024


def _references_when_free() -> int:
    """What ``SnapshotPool._is_free`` counts for a buffer that only the pool's list
    refers to (counted once, at import: in the zygote, not in every worker)."""
    buffers = [np.empty(0, np.uint8)]
    return sys.getrefcount(buffers[0])


_FREE_REFERENCES = _references_when_free()


class SnapshotPool:
    """Buffers for snapshots of large arrays (experiment thread only).

    A buffer is free again when nothing but the pool refers to it: pyzmq holds a
    reference to a buffer it sends without a copy until libzmq has sent it (and its
    garbage thread releases it), so the reference count says when it may be reused.
    """

    def __init__(self, max_free_bytes: int = MAX_FREE_BYTES):
        self._max_free_bytes = max_free_bytes
        self._buffers: list[np.ndarray] = []

    def _is_free(self, index: int) -> bool:
        # no local name may hold the buffer while it is counted
        return sys.getrefcount(self._buffers[index]) == _FREE_REFERENCES

    def copy(self, frame: Any) -> Any:
        """A copy of an out-of-band frame made by ``pack`` (``bytes`` are copies
        already and are returned as they are)."""
        if isinstance(frame, bytes):
            return frame
        source = np.frombuffer(frame, np.uint8)
        buffer = self._take(source.nbytes)
        np.copyto(buffer, source)
        return buffer

    def _take(self, nbytes: int) -> np.ndarray:
        free_bytes = 0
        for index in range(len(self._buffers)):
            if self._is_free(index):
                size = self._buffers[index].nbytes
                if size == nbytes:
                    return self._buffers[index]
                free_bytes += size
        self._trim(free_bytes + nbytes)
        buffer = np.empty(nbytes, np.uint8)
        self._buffers.append(buffer)
        return buffer

    def _trim(self, free_bytes: int) -> None:
        """Forget free buffers, oldest first, until at most the allowed bytes stay
        free (counting the one about to be made)."""
        index = 0
        while free_bytes > self._max_free_bytes and index < len(self._buffers):
            if self._is_free(index):
                free_bytes -= self._buffers.pop(index).nbytes
            else:
                index += 1

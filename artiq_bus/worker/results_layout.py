"""Where results files go: ``<root>/YYYY-MM-DD/HH/<rid:09>-<ClassName>.h5``, local
time of the run's start, the experiment *class* name.

Apart from :mod:`.results` (the writer) so that a worker knows where its file goes
without importing h5py: a worker leaves writing it to the results node.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["results_dir", "results_path"]


def results_dir(root: str | os.PathLike[str], start_time: float) -> Path:
    """``<root>/YYYY-MM-DD/HH`` for the local time of ``start_time``."""
    local = time.localtime(start_time)
    return Path(root) / time.strftime("%Y-%m-%d", local) / time.strftime("%H", local)


def results_path(root: str | os.PathLike[str], start_time: float, rid: int,
                 class_name: str) -> Path:
    """``<root>/YYYY-MM-DD/HH/<rid:09>-<ClassName>.h5`` (local time of ``start_time``)."""
    return results_dir(root, start_time) / f"{rid:09}-{class_name}.h5"

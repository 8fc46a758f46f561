"""RIDs: run identifiers, monotonic across master restarts.

The last RID handed out is kept in ``last_rid.pyon``: plain text, the integer and a
newline (ARTIQ's format, whatever the extension says), replaced atomically.  Handing
out a RID touches no disk: :meth:`RIDCounter.store` writes the file from the persisted
schedule's writer thread (:mod:`.persist`), whose file also records the last RID — so
an acknowledged RID is durable and a submission costs no fsync on the event loop.  When
the file is missing (or unreadable) the last RID is recovered from results file names,
``results/YYYY-MM-DD/HH(-MM)?/NNNNNNNNN-*.h5``; with none, the first RID is 0.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

from ..files import atomic_replace

__all__ = ["RIDCounter", "last_rid_in_results"]

logger = logging.getLogger(__name__)

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_HOUR = re.compile(r"\d{2}(-\d{2})?")
_RESULT = re.compile(r"(\d{9})-.*\.h5")


def _subdirs(path: Path, pattern: re.Pattern[str]) -> list[Path]:
    try:
        return [p for p in path.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]
    except OSError:
        return []


def last_rid_in_results(results_dir: str | os.PathLike[str]) -> int:
    """The highest RID among the results files under ``results_dir`` (-1 if none)."""
    last = -1
    for day in _subdirs(Path(results_dir), _DAY):
        for hour in _subdirs(day, _HOUR):
            try:
                names = [p.name for p in hour.iterdir()]
            except OSError:
                continue
            for name in names:
                match = _RESULT.fullmatch(name)
                if match:
                    last = max(last, int(match.group(1)))
    return last


class RIDCounter:
    """Hands out RIDs; :meth:`store` brings the cache file up to date."""

    def __init__(self, path: str | os.PathLike[str] = "last_rid.pyon",
                 results_dir: str | os.PathLike[str] = "results"):
        self._path = Path(path)
        self._results_dir = Path(results_dir)
        self._lock = threading.Lock()  # store() runs in a writer thread
        self._stored: int | None = None
        self._next = self._load_last() + 1
        self.store()

    @property
    def path(self) -> Path:
        return self._path

    def _load_last(self) -> int:
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self._recover("is missing")
        except OSError as exc:
            return self._recover(f"cannot be read ({exc})")
        try:
            return int(text)
        except ValueError:
            return self._recover(f"holds no integer ({text[:40]!r})")

    def _recover(self, why: str) -> int:
        last = last_rid_in_results(self._results_dir)
        log = logger.warning if self._path.exists() else logger.info
        log("RID file %s %s: last RID %d recovered from %s", self._path, why, last,
            self._results_dir)
        return last

    @property
    def last(self) -> int:
        """The last RID handed out (-1 before the first)."""
        return self._next - 1

    def store(self) -> None:
        """Write the last RID to the cache file, unless it is there already (from any
        thread)."""
        with self._lock:
            last = self.last
            if last == self._stored:
                return
            # the persisted schedule holds the last RID durably: no fsync here
            with atomic_replace(self._path, durable=False) as temp:
                temp.write_text(f"{last}\n", encoding="utf-8")
            self._stored = last

    def get(self) -> int:
        """A new RID (in memory: see :meth:`store`)."""
        rid = self._next
        self._next = rid + 1
        return rid

    def advance_past(self, rid: int) -> None:
        """Never hand out ``rid`` or anything below it (RIDs known from elsewhere, such
        as a persisted schedule), and store that at once."""
        if rid >= self._next:
            self._next = rid + 1
            self.store()
            logger.info("RID counter advanced past RID %d", rid)

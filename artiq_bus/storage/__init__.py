"""Embedded storage of the master's nodes: persistent datasets (LMDB)."""

from .dataset_db import DatasetStore, GroupCommitter
from .errors import StorageError

__all__ = ["DatasetStore", "GroupCommitter", "StorageError"]

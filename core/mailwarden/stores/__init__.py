"""The core's stores of user data: one abstraction for every bounded store (bounded.py),
LMDB environments (lmdb_env.py), time-ordered indexed records (recordlog.py), one-file-per-
record stores (files.py) and content-addressed bodies (blobs.py)."""

from .bounded import BoundedStore, StoreFull, Usage, admit, enforce, over_caps
from .files import FileStore
from .lmdb_env import LmdbEnv
from .recordlog import RecordLog

__all__ = [
    "BoundedStore",
    "FileStore",
    "LmdbEnv",
    "RecordLog",
    "StoreFull",
    "Usage",
    "admit",
    "enforce",
    "over_caps",
]

"""The local directory cache: an LMDB environment under the gateway's home.

Sub-databases: ``addresses`` (address -> entry), ``names`` (lower-case name, NUL, DN -> search
hit, for prefix search) and ``meta`` (time of the last full refresh). A full refresh replaces
everything in one write transaction, so readers see the old snapshot or the new one, never
half of each. Readers never block writers (LMDB), so rules read it on the hot path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lmdb
import msgspec

from .model import DirectoryEntry, DirectoryGroup, SearchHit

__all__ = ["DirectoryCache", "remove_cache"]

_MAP_SIZE = 1 << 30  # sparse: LMDB takes only the pages it writes
_ADDRESSES = b"addresses"
_NAMES = b"names"
_META = b"meta"
_REFRESHED = b"refreshed"

_entry_decoder = msgspec.json.Decoder(DirectoryEntry)
_hit_decoder = msgspec.json.Decoder(SearchHit)
_encoder = msgspec.json.Encoder()


_FILES = ("data.mdb", "lock.mdb")


def remove_cache(path: Path) -> bool:
    """Delete the cache at ``path``; whether there was one.

    Only LMDB's own files are removed, then the folder if that leaves it empty: a
    ``cache_path`` pointed at a folder holding anything else never costs that content.
    """
    if not (path / _FILES[0]).is_file():
        return False
    for name in _FILES:
        (path / name).unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass  # other files live there; they are not ours to delete
    return True


class DirectoryCache:
    """Addresses resolved by the directory, with the groups of each, on disk."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        # The cache holds names and group memberships of the organisation's people.
        path.chmod(0o700)
        self.path = path
        self._env: Any = lmdb.open(str(path), map_size=_MAP_SIZE, max_dbs=4, subdir=True)
        self._addresses = self._env.open_db(_ADDRESSES)
        self._names = self._env.open_db(_NAMES)
        self._meta = self._env.open_db(_META)

    def close(self) -> None:
        """Close the environment (idempotent)."""
        if self._env is not None:
            self._env.close()
            self._env = None

    def get(self, address: str) -> DirectoryEntry | None:
        """The cached entry for ``address`` (any case), else ``None``."""
        with self._env.begin(db=self._addresses) as txn:
            data = txn.get(address.lower().encode("utf-8"))
        return _entry_decoder.decode(data) if data is not None else None

    def put(self, entry: DirectoryEntry) -> None:
        """Store one entry under each of its addresses (a live lookup's answer)."""
        with self._env.begin(write=True) as txn:
            self._write_entry(txn, entry)

    def replace_all(
        self, entries: Iterable[DirectoryEntry], groups: Iterable[DirectoryGroup]
    ) -> None:
        """Replace the whole cache with a full refresh's result, atomically."""
        with self._env.begin(write=True) as txn:
            txn.drop(self._addresses, delete=False)
            txn.drop(self._names, delete=False)
            for entry in entries:
                self._write_entry(txn, entry)
            for group in groups:
                hit = SearchHit(kind="group", name=group.cn, dn=group.dn)
                self._write_name(txn, group.cn, hit)
            txn.put(_REFRESHED, repr(time.time()).encode(), db=self._meta)

    def _write_entry(self, txn: Any, entry: DirectoryEntry) -> None:
        data = _encoder.encode(entry)
        for address in entry.addresses:
            txn.put(address.encode("utf-8"), data, db=self._addresses)
        hit = SearchHit(
            kind=entry.kind,
            name=entry.cn,
            dn=entry.dn,
            address=entry.addresses[0] if entry.addresses else None,
        )
        names = {entry.cn, *entry.addresses}
        if entry.sam_account_name:
            names.add(entry.sam_account_name)
        if entry.user_principal_name:
            names.add(entry.user_principal_name)
        for name in names:
            self._write_name(txn, name, hit)

    def _write_name(self, txn: Any, name: str, hit: SearchHit) -> None:
        key = name.lower().encode("utf-8") + b"\0" + hit.dn.lower().encode("utf-8")
        txn.put(key, _encoder.encode(hit), db=self._names)

    def refreshed_at(self) -> float | None:
        """When the last full refresh was stored, else ``None`` (never refreshed)."""
        with self._env.begin(db=self._meta) as txn:
            data = txn.get(_REFRESHED)
        return float(data) if data is not None else None

    def count(self) -> int:
        """How many addresses are cached."""
        with self._env.begin(db=self._addresses) as txn:
            return int(txn.stat(self._addresses)["entries"])

    def search(self, prefix: str, limit: int = 10) -> list[SearchHit]:
        """Users, contacts and groups whose name, address, sAMAccountName or UPN starts with
        ``prefix`` (case-insensitive), each once, in name order, at most ``limit``."""
        wanted = prefix.lower().encode("utf-8")
        hits: list[SearchHit] = []
        seen: set[str] = set()
        with self._env.begin(db=self._names) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(wanted):
                return hits
            for key, value in cursor:
                if not key.startswith(wanted) or len(hits) >= limit:
                    break
                hit = _hit_decoder.decode(value)
                if hit.dn.lower() not in seen:
                    seen.add(hit.dn.lower())
                    hits.append(hit)
        return hits

"""The plugin's files: where they live, the consent-withdrawal mark, pending statistics.

A running gateway reads its config once, at start. So that withdrawing consent stops traffic at
once, ``mailwarden reputation consent --withdraw`` writes a small mark file into the plugin's
data directory; the detector checks for it (one ``stat``) before every lookup and every
statistics delivery, and while it exists nothing leaves the node whatever the config says.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lmdb
import msgspec

from mailwarden_sdk.files import atomic_write

from .cache import count_entries

__all__ = [
    "CONSENT_MARK",
    "PLUGIN_DIR",
    "ConsentMark",
    "PendingStatistics",
    "RecordedConsent",
    "count_pending",
    "data_dir_for",
    "grant_consent",
    "read_withdrawal",
    "recorded_consent",
    "withdraw_consent",
    "withdrawn",
]

PLUGIN_DIR = "reputation"
#: The file ``consent --withdraw`` writes into the data directory.
CONSENT_MARK = _MARK = "consent-withdrawn.json"
_COUNT = struct.Struct(">Q")


def _config_file(config_path: str | None) -> tuple[Path | None, dict[str, Any]]:
    default_home = Path(os.environ.get("MAILWARDEN_HOME") or "var").absolute()
    path = config_path or os.environ.get("MAILWARDEN_CONFIG")
    if not path and (default_home / "mailwarden.toml").exists():
        path = str(default_home / "mailwarden.toml")
    if not path:
        return None, {}
    config_file = Path(path).absolute()
    try:
        return config_file, tomllib.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return config_file, {}


def data_dir_for(config_path: str | None = None) -> Path:
    """The plugin's data directory as the gateway would resolve it, outside a running gateway.

    Follows the core's rules: ``config_path``, else ``$MAILWARDEN_CONFIG``, else
    ``<home>/mailwarden.toml``; the config's ``[gateway] home`` (relative to the file), else the
    file's folder; with no config, ``$MAILWARDEN_HOME`` or ``./var``. Plugin commands need it
    because the core gives them no host (they may run where no gateway config loads).
    """
    config_file, data = _config_file(config_path)
    if config_file is None:
        return Path(os.environ.get("MAILWARDEN_HOME") or "var").absolute() / PLUGIN_DIR
    home = str(data.get("gateway", {}).get("home", "") or "")
    if not home:
        return config_file.parent / PLUGIN_DIR
    home_path = Path(home)
    return (home_path if home_path.is_absolute() else config_file.parent / home_path) / PLUGIN_DIR


class RecordedConsent(msgspec.Struct, kw_only=True, frozen=True):
    """``[reputation] consent`` as the config file records it, and where that file is."""

    config: str | None
    consent: bool
    by: str
    at: str


def recorded_consent(config_path: str | None = None) -> RecordedConsent:
    """What the config file says about consent (read as text; not validated here)."""
    config_file, data = _config_file(config_path)
    section = data.get("reputation", {})
    return RecordedConsent(
        config=str(config_file) if config_file else None,
        consent=section.get("consent") is True,
        by=str(section.get("consent_by", "")),
        at=str(section.get("consent_at", "")),
    )


class ConsentMark(msgspec.Struct, kw_only=True, frozen=True):
    """Who withdrew consent, and when (ISO 8601, UTC)."""

    withdrawn_by: str
    withdrawn_at: str


def withdrawn(data_dir: Path) -> bool:
    """Whether consent was withdrawn through the command line (a single ``stat``)."""
    return os.path.exists(data_dir / _MARK)


def read_withdrawal(data_dir: Path) -> ConsentMark | None:
    """The recorded withdrawal, if any."""
    try:
        return msgspec.json.decode((data_dir / _MARK).read_bytes(), type=ConsentMark)
    except (OSError, msgspec.DecodeError):
        return None


def withdraw_consent(data_dir: Path, by: str) -> ConsentMark:
    """Record the withdrawal (running gateways stop at their next lookup) and delete statistics."""
    data_dir.mkdir(parents=True, exist_ok=True)
    mark = ConsentMark(
        withdrawn_by=by,
        withdrawn_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    atomic_write(data_dir / _MARK, msgspec.json.encode(mark))
    stats = PendingStatistics(data_dir / "statistics")
    try:
        stats.delete_all()
    finally:
        stats.close()
    return mark


def grant_consent(data_dir: Path) -> bool:
    """Remove a withdrawal mark so the config's ``consent`` applies again; ``True`` if removed."""
    try:
        (data_dir / _MARK).unlink()
    except FileNotFoundError:
        return False
    return True


def count_pending(path: Path) -> int | None:
    """How many ``kind:verdict`` counts wait at ``path`` without joining its writers;
    ``None`` if there is no store. For the data inventory, which would otherwise count the
    two LMDB files as entries."""
    return count_entries(path, b"counts")


class PendingStatistics:
    """Detection counts by ``kind:verdict`` not yet delivered, in LMDB, shared by all workers.

    Counts only ever hold a kind of lookup and a verdict, never the looked-up value. Delivery
    subtracts exactly what was sent, so counts added meanwhile by other workers are kept.
    """

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._env = lmdb.open(str(path), map_size=16 << 20, max_dbs=1)
        self._db = self._env.open_db(b"counts")

    def close(self) -> None:
        """Close the environment."""
        self._env.close()

    def add(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` to what is pending."""
        if not counts:
            return
        with self._env.begin(write=True) as txn:
            for key, n in counts.items():
                bkey = key.encode()
                old = txn.get(bkey, db=self._db)
                total = n + (_COUNT.unpack(old)[0] if old is not None else 0)
                txn.put(bkey, _COUNT.pack(total), db=self._db)

    def pending(self) -> dict[str, int]:
        """What would be sent now."""
        with self._env.begin() as txn:
            return {bytes(k).decode(): int(_COUNT.unpack(v)[0]) for k, v in txn.cursor(db=self._db)}

    def subtract(self, sent: Mapping[str, int]) -> None:
        """Remove what was delivered; keys that reach zero are deleted."""
        with self._env.begin(write=True) as txn:
            for key, n in sent.items():
                bkey = key.encode()
                old = txn.get(bkey, db=self._db)
                if old is None:
                    continue
                left = int(_COUNT.unpack(old)[0]) - n
                if left > 0:
                    txn.put(bkey, _COUNT.pack(left), db=self._db)
                else:
                    txn.delete(bkey, db=self._db)

    def delete_all(self) -> None:
        """Delete every pending count (consent withdrawn)."""
        with self._env.begin(write=True) as txn:
            txn.drop(self._db, delete=False)
        self._env.sync(True)

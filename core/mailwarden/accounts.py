"""The local accounts: names, scrypt password hashes and roles, in ``<home>/web/users.json``.

Below both the web interface (which adds sessions, API tokens and CSRF on top,
:mod:`mailwarden.web.auth`) and SMTP AUTH (which checks a client's password against the same
accounts), so the mail engine never imports the web package to check a password. Passwords
are stored as scrypt hashes (memory-hard, in the standard library).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailwarden_sdk.files import atomic_write

from .access import permissions_of

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "Accounts",
    "Identity",
    "hash_password",
    "local_accounts",
    "verify_password",
    "write_private",
]

_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    """A storable scrypt hash of ``password`` (salt and parameters included)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, maxmem=_MAXMEM, dklen=32, **_SCRYPT)
    encoded = [base64.b64encode(x).decode() for x in (salt, digest)]
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${encoded[0]}${encoded[1]}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches the ``stored`` hash (constant-time compare)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class Identity:
    """An authenticated user or token and what it may do."""

    name: str
    roles: tuple[str, ...]
    permissions: frozenset[str]
    source: str  # "local", "directory" or "token"
    session: str = ""  # the session id (cookie logins only)

    def may(self, permission: str) -> bool:
        """Whether this identity holds ``permission``."""
        return permission in self.permissions


_DECOY: list[str] = []


def _decoy_hash() -> str:
    # A hash with the parameters real ones have, of a password nobody knows.
    if not _DECOY:
        _DECOY.append(hash_password(secrets.token_urlsafe(16)))
    return _DECOY[0]


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, in a directory only its owner may enter."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, data)


class Accounts:
    """The local accounts kept under ``directory`` (files mode 0600)."""

    def __init__(self, directory: Path, *, custom_roles: dict[str, list[str]]) -> None:
        self.directory = directory
        self.custom_roles = custom_roles
        self._users_cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None

    def _users(self) -> dict[str, Any]:
        path = self.directory / "users.json"
        if not path.exists():
            return {}
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def _save_users(self, users: dict[str, Any]) -> None:
        write_private(self.directory / "users.json", json.dumps(users, indent=2).encode())

    def ensure_admin(self) -> Path | None:
        """Create the local administrator on first start; the file holding its first password.

        The password is random and written once to a 0600 file beside the accounts (never to
        the log); the admin changes it with ``mailwarden web password``.
        """
        users = self._users()
        if "admin" in users:
            return None
        password = secrets.token_urlsafe(15)
        self.set_password("admin", password, roles=["Administrator"])
        path = self.directory / "initial-admin-password"
        write_private(path, (password + "\n").encode())
        return path

    def set_password(self, name: str, password: str, roles: list[str] | None = None) -> None:
        """Set a local account's password (and roles, when given)."""
        if len(password) < 10:
            raise ValueError("a password needs at least 10 characters")
        users = self._users()
        account = users.setdefault(name, {"roles": roles or ["Administrator"]})
        if roles is not None:
            account["roles"] = roles
        account["hash"] = hash_password(password)
        self._save_users(users)
        if name == "admin":
            # The generated first password is no longer the password: do not leave it lying.
            (self.directory / "initial-admin-password").unlink(missing_ok=True)

    def local_login(self, name: str, password: str) -> Identity | None:
        """The local account ``name`` if ``password`` is its own.

        A name with no account costs the same scrypt work as a wrong password, so the time
        of the answer does not tell which names exist."""
        account = self._users().get(name)
        stored = str(account.get("hash", "")) if account is not None else ""
        if account is None or not stored.startswith("scrypt$"):
            verify_password(password, _decoy_hash())
            return None
        if not verify_password(password, stored):
            return None
        roles = tuple(account.get("roles", []))
        return Identity(name, roles, permissions_of(roles, self.custom_roles), "local")

    def identity_for(self, name: str, roles: tuple[str, ...], source: str) -> Identity:
        """An identity with the permissions its roles grant."""
        return Identity(name, roles, permissions_of(roles, self.custom_roles), source)

    def users(self) -> list[dict[str, Any]]:
        """Local accounts and their roles (never the hashes)."""
        return [{"name": n, "roles": a.get("roles", [])} for n, a in sorted(self._users().items())]

    def _users_now(self) -> dict[str, Any]:
        # Read on every session check (another worker or the CLI may have changed it); parsed
        # again only when the file did.
        path = self.directory / "users.json"
        try:
            info = path.stat()
        except FileNotFoundError:
            return {}
        mark = (info.st_mtime_ns, info.st_size, info.st_ino)
        if self._users_cache is None or self._users_cache[0] != mark:
            self._users_cache = (mark, self._users())
        return self._users_cache[1]


def local_accounts(config: Config) -> Accounts:
    """The gateway's local accounts (``<home>/web``), as the web interface keeps them."""
    return Accounts(config.home / "web", custom_roles=config.web.roles)

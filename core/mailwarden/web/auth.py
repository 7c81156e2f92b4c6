"""Who is asking: the local administrator, directory users, API tokens; sessions and CSRF.

The accounts and their scrypt password hashes are :mod:`mailwarden.accounts` (SMTP AUTH checks
them too); this adds what only the web has. Sessions are signed cookies (HMAC-SHA256 with a
per-installation secret), so every worker process accepts them without shared state; a
session id is made fresh at each login, which is what defeats session fixation, and logging
out revokes that id. CSRF tokens are derived from the session id; API tokens carry no cookie
and need none. Failed logins are throttled per client address (never per account: failures
from one address must not lock the account out for everyone).

A session carries a stamp of what it was granted on (the local account's password hash and
roles, or the directory group mapping); when that changes, the session ends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from ..accounts import Accounts, Identity, write_private
from .permissions import BUILTIN_ROLES, permissions_of

__all__ = [
    "Identity",
    "Throttle",
    "WebAuth",
    "client_key",
]


class Throttle:
    """At most ``attempts`` failed logins per key in ``window`` seconds.

    Bounded whatever is sent: at most ``max_keys`` keys (the least recently failed go first),
    each key at most 128 characters (longer ones are kept as their hash), at most
    ``attempts`` times per key, and keys whose failures are all older than ``window`` are
    dropped.
    """

    MAX_KEY = 128

    def __init__(self, attempts: int, window: float = 900.0, max_keys: int = 10_000) -> None:
        self.attempts, self.window, self.max_keys = attempts, window, max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()
        self._swept = time.monotonic()

    def __len__(self) -> int:
        return len(self._failures)

    @classmethod
    def _key(cls, key: str) -> str:
        if len(key) <= cls.MAX_KEY:
            return key
        return "sha256:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()

    def _sweep(self, now: float) -> None:
        for key in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window]:
            del self._failures[key]
        self._swept = now

    def retry_after(self, *keys: str) -> float:
        """Seconds until a login for ``keys`` is allowed again (0: now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key in map(self._key, keys):
                failures = self._failures.get(key)
                if failures is None:
                    continue
                while failures and failures[0] <= now - self.window:
                    failures.popleft()
                if not failures:
                    del self._failures[key]
                elif len(failures) >= self.attempts:
                    wait = max(wait, failures[0] + self.window - now)
        return wait

    def failed(self, *keys: str) -> None:
        """Count one failed login against each of ``keys``."""
        now = time.monotonic()
        with self._lock:
            if now - self._swept > min(60.0, self.window):
                self._sweep(now)
            for key in map(self._key, keys):
                failures = self._failures.pop(key, None)
                if failures is None:
                    failures = deque(maxlen=self.attempts)
                failures.append(now)
                self._failures[key] = failures  # most recently failed last
            if len(self._failures) > self.max_keys:
                self._sweep(now)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def succeeded(self, *keys: str) -> None:
        """Forget the failures of ``keys``."""
        with self._lock:
            for key in map(self._key, keys):
                self._failures.pop(key, None)


def client_key(address: str) -> str:
    """The throttle key of a client address: the address itself, or its /64 for IPv6 (one
    site or host holds a whole /64, and would otherwise get 2**64 fresh tries)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"client:{address[:64]}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"client:{ip.ipv4_mapped}"
        return f"client:{ipaddress.ip_network(f'{ip}/64', strict=False)}"
    return f"client:{ip}"


class WebAuth(Accounts):
    """The local accounts with the web's API tokens and sessions, kept under ``directory``
    (files mode 0600)."""

    def __init__(
        self,
        directory: Path,
        *,
        session_seconds: float,
        custom_roles: dict[str, list[str]],
        login_attempts: int,
        groups: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(directory, custom_roles=custom_roles)
        self.session_seconds = session_seconds
        #: ``[web] groups``: a directory user's session ends when it changes.
        self.groups: dict[str, list[str]] = dict(groups or {})
        self.throttle = Throttle(login_attempts)
        self._secret = self._load_secret()
        self._revoked: dict[str, float] = {}

    # -- files -------------------------------------------------------------------------------

    def _load_secret(self) -> bytes:
        path = self.directory / "secret"
        if not path.exists():
            write_private(path, secrets.token_bytes(32))
        return path.read_bytes()

    # -- tokens ------------------------------------------------------------------------------

    def create_token(self, name: str, roles: list[str]) -> str:
        """A new API token for automation; only its hash is kept."""
        unknown = [r for r in roles if r not in BUILTIN_ROLES and r not in self.custom_roles]
        if unknown:
            raise ValueError(f"unknown roles {unknown}")
        if not name.strip():
            raise ValueError("a token needs a name")
        token = "mwt_" + secrets.token_urlsafe(32)
        tokens = self._tokens()
        tokens[hashlib.sha256(token.encode()).hexdigest()] = {
            "name": name,
            "roles": roles,
            "created": time.time(),
        }
        self._save_tokens(tokens)
        return token

    def _tokens(self) -> dict[str, Any]:
        path = self.directory / "tokens.json"
        data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return data

    def _save_tokens(self, tokens: dict[str, Any]) -> None:
        write_private(self.directory / "tokens.json", json.dumps(tokens, indent=2).encode())

    def tokens(self) -> list[dict[str, Any]]:
        """Every API token: an id (the start of its hash, never the token), name, roles and
        the permissions (scopes) those roles grant now."""
        return [
            {
                "id": digest[:16],
                "name": entry["name"],
                "roles": entry["roles"],
                "scopes": sorted(permissions_of(entry["roles"], self.custom_roles)),
                "created": entry.get("created"),
            }
            for digest, entry in sorted(self._tokens().items(), key=lambda i: i[1]["name"])
        ]

    def revoke_token(self, token_id: str) -> str | None:
        """Delete the token whose id is ``token_id``; its name, or ``None`` if there is none."""
        tokens = self._tokens()
        matches = [d for d in tokens if len(token_id) == 16 and d[:16] == token_id]
        if len(matches) != 1:
            return None
        entry = tokens.pop(matches[0])
        self._save_tokens(tokens)
        return str(entry["name"])

    def token_identity(self, token: str) -> Identity | None:
        """Who the bearer ``token`` belongs to, if anyone."""
        path = self.directory / "tokens.json"
        if not token.startswith("mwt_") or not path.exists():
            return None
        entry = json.loads(path.read_text()).get(hashlib.sha256(token.encode()).hexdigest())
        if entry is None:
            return None
        roles = tuple(entry["roles"])
        return Identity(entry["name"], roles, permissions_of(roles, self.custom_roles), "token")

    # -- sessions ----------------------------------------------------------------------------

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._secret, payload, hashlib.sha256).hexdigest()

    def new_session(self, identity: Identity) -> str:
        """A cookie value for a fresh session of ``identity`` (a new id every login)."""
        body = {
            "sid": secrets.token_urlsafe(18),
            "name": identity.name,
            "roles": list(identity.roles),
            "source": identity.source,
            "exp": time.time() + self.session_seconds,
            "stamp": self._stamp(identity.name, identity.source, identity.roles),
        }
        payload = base64.urlsafe_b64encode(json.dumps(body).encode())
        return payload.decode() + "." + self._sign(payload)

    def session_identity(self, cookie: str) -> Identity | None:
        """The identity of a valid, unexpired, unrevoked session cookie."""
        payload, _, signature = cookie.partition(".")
        if not hmac.compare_digest(self._sign(payload.encode()), signature):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(payload.encode()))
        except ValueError:
            return None
        if body["exp"] < time.time() or self._is_revoked(body["sid"]):
            return None
        roles = tuple(body["roles"])
        stamp = self._stamp(body["name"], body["source"], roles)
        if stamp is None or not hmac.compare_digest(str(body.get("stamp")), stamp):
            # The password, the roles or the group mapping changed since this login.
            return None
        return Identity(
            body["name"],
            roles,
            permissions_of(roles, self.custom_roles),
            body["source"],
            session=body["sid"],
        )

    def _stamp(self, name: str, source: str, roles: tuple[str, ...] | list[str]) -> str | None:
        """What a session of ``name`` was granted on, as a digest: for a local account its
        password hash and roles (``None`` once the account is gone), for a directory user the
        group mapping that gave the roles."""
        if source == "local":
            account = self._users_now().get(name)
            if account is None:
                return None
            basis = json.dumps([account.get("hash", ""), sorted(account.get("roles", []))])
        else:
            basis = json.dumps([sorted(roles), self.groups], sort_keys=True)
        return self._sign(b"stamp:" + basis.encode())[:32]

    def revoke(self, identity: Identity) -> None:
        """End ``identity``'s session in every worker (written to a shared file)."""
        if not identity.session:
            return
        path = self.directory / "revoked"
        now = time.time()
        lines = [f"{identity.session} {now + self.session_seconds:.0f}"]
        if path.exists():
            # Drop what has expired anyway, so the file stays small.
            lines += [
                line
                for line in path.read_text().splitlines()
                if line.split()[-1:] and float(line.split()[-1]) > now
            ]
        write_private(path, ("\n".join(lines) + "\n").encode())

    def _is_revoked(self, sid: str) -> bool:
        path = self.directory / "revoked"
        try:
            return any(line.split(" ", 1)[0] == sid for line in path.read_text().splitlines())
        except FileNotFoundError:
            return False

    def login_csrf(self, nonce: str) -> str:
        """The token the login form carries for the pre-login cookie ``nonce``."""
        return self._sign(b"login-csrf:" + nonce.encode())[:32]

    def check_login_csrf(self, nonce: str, token: str) -> bool:
        """Whether ``token`` came from a login form this site gave to the holder of ``nonce``."""
        return bool(nonce and token) and hmac.compare_digest(self.login_csrf(nonce), token)

    def csrf_token(self, identity: Identity) -> str:
        """The CSRF token forms and cookie-authenticated API calls must send back."""
        return self._sign(b"csrf:" + identity.session.encode())[:32]

    def check_csrf(self, identity: Identity, token: str) -> bool:
        """Whether ``token`` is ``identity``'s CSRF token (tokens need none)."""
        if identity.source == "token":
            return True
        return bool(token) and hmac.compare_digest(self.csrf_token(identity), token)

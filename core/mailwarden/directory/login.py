"""Checking a directory user's password: a bind as that user, simple or NTLM.

The web interface's logins and SMTP AUTH both check through here (it sits below both).

``[web] login_bind`` chooses how: ``simple`` binds with the entry's DN; ``ntlm`` binds as
``DOMAIN\\sAMAccountName`` (Active Directory's Sicily NTLM bind, through ldap3); ``auto`` reads
the server's root DSE and uses NTLM only where the server offers it, otherwise a simple bind.

"Offers" means the NTLM bind ldap3 speaks: the Sicily bind of Active Directory (and AD LDS,
Samba AD), which such a server announces with its ``supportedCapabilities``. An ``NTLM`` among
``supportedSASLMechanisms`` is not that: OpenLDAP with Cyrus SASL lists it, yet answers a
Sicily bind with ``authMethodNotSupported``. The domain is ``[web] ntlm_domain``, else the
``DOMAIN\\`` of ``[directory] bind_dn``. A server that refuses the method gives a login
failure that says so, never an error page.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ldap3
from ldap3.core.exceptions import LDAPException

from .client import ldap_server

if TYPE_CHECKING:
    from ..config import DirectoryConfig, WebConfig
    from .model import DirectoryEntry
    from .service import Directory

__all__ = ["BindResult", "check_directory_password", "login_directory_user", "server_offers_ntlm"]

log = logging.getLogger(__name__)

# supportedCapabilities of Active Directory (DS) and AD LDS; both take the Sicily NTLM bind.
_AD_CAPABILITIES = frozenset({"1.2.840.113556.1.4.800", "1.2.840.113556.1.4.1851"})
_DSE_TTL = 600.0
_dse_cache: dict[str, tuple[float, bool]] = {}
_dse_lock = threading.Lock()


@dataclass(frozen=True)
class BindResult:
    """Whether the password was right, how it was checked, and why not when it could not be."""

    ok: bool
    method: str
    problem: str = ""


def server_offers_ntlm(cfg: DirectoryConfig) -> bool:
    """Whether the root DSE of ``cfg``'s server offers NTLM (kept for ten minutes)."""
    with _dse_lock:
        cached = _dse_cache.get(cfg.url)
        if cached is not None and time.monotonic() - cached[0] < _DSE_TTL:
            return cached[1]
    offered = False
    try:
        conn = ldap3.Connection(
            ldap_server(cfg, get_info=ldap3.DSA),
            receive_timeout=max(1, math.ceil(cfg.timeout)),
            read_only=True,
            raise_exceptions=False,
        )
        conn.open()  # an anonymous read of the root DSE, which servers allow
        if cfg.start_tls:
            conn.start_tls()
            conn.refresh_server_info()
        info = conn.server.info
        if info is not None:
            capabilities = {str(c) for c in _other(info, "supportedCapabilities")}
            offered = bool(capabilities & _AD_CAPABILITIES)
        conn.unbind()
    except LDAPException as exc:
        log.warning("cannot read the root DSE of %s: %s", cfg.url, exc)
    with _dse_lock:
        _dse_cache[cfg.url] = (time.monotonic(), offered)
    return offered


def _other(info: Any, name: str) -> list[Any]:
    other = getattr(info, "other", None) or {}
    return list(other.get(name, []))


def _domain(web: WebConfig, cfg: DirectoryConfig) -> str:
    if web.ntlm_domain:
        return web.ntlm_domain
    return cfg.bind_dn.split("\\", 1)[0] if "\\" in cfg.bind_dn else ""


def check_directory_password(
    web: WebConfig, cfg: DirectoryConfig, entry: DirectoryEntry, password: str
) -> BindResult:
    """Bind as ``entry`` with ``password`` on a connection of its own.

    An empty password is refused before any bind: LDAP takes a simple bind without one as an
    anonymous bind that succeeds.
    """
    method = web.login_bind
    if method == "auto":
        method = "ntlm" if server_offers_ntlm(cfg) and _domain(web, cfg) else "simple"
    if not password:
        return BindResult(False, method)
    if method == "ntlm":
        domain = _domain(web, cfg)
        account = entry.sam_account_name
        if not domain or not account:
            return BindResult(
                False,
                method,
                "NTLM login needs [web] ntlm_domain (or a DOMAIN\\user bind_dn) and the "
                "user's sAMAccountName",
            )
        user, authentication = f"{domain}\\{account}", ldap3.NTLM
    else:
        user, authentication = entry.dn, ldap3.SIMPLE
    try:
        conn = ldap3.Connection(
            ldap_server(cfg),
            user=user,
            password=password,
            authentication=authentication,
            receive_timeout=max(1, math.ceil(cfg.timeout)),
            read_only=True,
            raise_exceptions=False,
        )
        conn.open()
        if cfg.start_tls:
            conn.start_tls()
        ok = bool(conn.bind())
        result = conn.result or {}
        conn.unbind()
    except LDAPException as exc:
        if method == "ntlm":
            return BindResult(False, method, f"the directory server refused the NTLM bind: {exc}")
        return BindResult(False, method, f"cannot reach the directory server: {exc}")
    if ok:
        return BindResult(True, method)
    description = str(result.get("description") or "")
    if method == "ntlm" and description != "invalidCredentials":
        # A server without the Sicily bind answers with an error, not with "wrong password".
        why = description or "no answer to the NTLM negotiation"
        return BindResult(
            False,
            method,
            f"the directory server does not offer NTLM bind ({why}); "
            'set [web] login_bind = "simple" or "auto"',
        )
    return BindResult(False, method)


def login_directory_user(
    directory: Directory, web: WebConfig, cfg: DirectoryConfig, address: str, password: str
) -> tuple[DirectoryEntry, BindResult] | None:
    """Look ``address`` up and bind as it with ``password``: the entry and how the bind went,
    or ``None`` when the directory does not know the address (or could not be asked)."""
    from .model import DirectoryError

    try:
        entry = directory.client.lookup(address)
    except DirectoryError as exc:
        log.warning("directory lookup for %s failed: %s", address, exc)
        return None
    if entry is None:
        return None
    return entry, check_directory_password(web, cfg, entry, password)

"""Talking to the directory server with ldap3: bind, resolve an address, take a snapshot.

Every value that comes from mail (an address) enters a filter only through
``escape_filter_chars``, so ``*)(uid=*`` is searched for literally and matches nothing.
"""

from __future__ import annotations

import logging
import math
import ssl
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from ..config import DirectoryConfig
from .model import DirectoryEntry, DirectoryError, DirectoryGroup
from .names import normalize_dn, rdn_value

__all__ = ["DirectoryError", "LdapClient", "address_filter", "ldap_server"]

log = logging.getLogger(__name__)

_PAGE = 500
_ENTRY_ATTRIBUTES = (
    "cn",
    "mail",
    "proxyAddresses",
    "sAMAccountName",
    "userPrincipalName",
    "objectSid",
    "objectClass",
)


def address_filter(config: DirectoryConfig, address: str) -> str:
    """The LDAP filter that finds the user or contact owning ``address``.

    ``proxyAddresses`` holds ``SMTP:primary`` and ``smtp:alias`` values; the attribute
    compares case-insensitively, so ``smtp:`` finds both.
    """
    value = escape_filter_chars(address.strip())
    return f"(&{config.user_filter}(|(mail={value})(proxyAddresses=smtp:{value})))"


def _values(attributes: Mapping[str, Any], name: str) -> list[Any]:
    for key, value in attributes.items():
        if key.lower() == name.lower():
            if isinstance(value, list):
                return value
            return [] if value is None else [value]
    return []


def _first(attributes: Mapping[str, Any], name: str) -> str | None:
    values = _values(attributes, name)
    return str(values[0]) if values else None


def sid_to_string(raw: bytes) -> str:
    """A binary objectSid as ``S-1-5-21-...``."""
    if len(raw) < 8:
        return raw.hex()
    revision, count = raw[0], raw[1]
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack(f"<{count}I", raw[8 : 8 + 4 * count])
    return "-".join(["S", str(revision), str(authority), *map(str, subs)])


def ldap_server(cfg: DirectoryConfig, *, get_info: Any = ldap3.NONE) -> Any:
    """The ldap3 ``Server`` for ``cfg``: LDAPS or plain by the URL, certificates checked unless
    ``verify`` is off, with the configured CA file and connect timeout."""
    tls = ldap3.Tls(
        validate=ssl.CERT_REQUIRED if cfg.verify else ssl.CERT_NONE,
        ca_certs_file=cfg.ca_file or None,
        version=ssl.PROTOCOL_TLS_CLIENT,
    )
    return ldap3.Server(
        cfg.url,
        use_ssl=cfg.url.lower().startswith("ldaps://"),
        tls=tls,
        get_info=get_info,
        connect_timeout=cfg.timeout,
    )


class LdapClient:
    """One service-account connection to the server named in ``[directory]``."""

    def __init__(self, config: DirectoryConfig, password: str) -> None:
        self.config = config
        self._password = password
        self._conn: Any = None
        # The last address filter sent, for `mailwarden directory lookup -v` and tests.
        self.last_filter: str | None = None

    # -- connection ---------------------------------------------------------------------------

    def _server(self) -> Any:
        return ldap_server(self.config)

    def connect(self) -> Any:
        """An open, bound connection (reused while it stays open)."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        cfg = self.config
        if not cfg.bind_dn:
            authentication = ldap3.ANONYMOUS
        elif cfg.authentication == "ntlm":
            authentication = ldap3.NTLM
        else:
            authentication = ldap3.SIMPLE
        try:
            conn = ldap3.Connection(
                self._server(),
                user=cfg.bind_dn or None,
                password=self._password or None,
                authentication=authentication,
                # ldap3 packs this into a timeval of whole seconds.
                receive_timeout=max(1, math.ceil(cfg.timeout)),
                read_only=True,
                auto_referrals=False,
                raise_exceptions=True,
            )
            conn.open()
            if cfg.start_tls:
                conn.start_tls()
            conn.bind()
        except LDAPException as exc:
            raise DirectoryError(f"cannot bind to {cfg.url}: {exc}") from exc
        self._conn = conn
        return conn

    def close(self) -> None:
        """Unbind (idempotent)."""
        if self._conn is not None:
            try:
                self._conn.unbind()
            except LDAPException:
                log.debug("unbind failed", exc_info=True)
            self._conn = None

    def _search(self, search_filter: str, attributes: Iterable[str]) -> list[dict[str, Any]]:
        conn = self.connect()
        try:
            pages = conn.extend.standard.paged_search(
                self.config.base_dn,
                search_filter,
                search_scope=ldap3.SUBTREE,
                attributes=list(attributes),
                paged_size=_PAGE,
                generator=True,
            )
            return [item for item in pages if item.get("type") == "searchResEntry"]
        except LDAPException as exc:
            # The connection may be half-dead; the next call opens a new one.
            self.close()
            raise DirectoryError(f"search in {self.config.base_dn} failed: {exc}") from exc

    # -- entries ------------------------------------------------------------------------------

    def _entry(self, item: Mapping[str, Any], groups: list[DirectoryGroup]) -> DirectoryEntry:
        attrs = item.get("attributes") or {}
        raw = item.get("raw_attributes") or {}
        classes = {str(c).lower() for c in _values(attrs, "objectClass")}
        addresses: list[str] = []
        primary = [str(v)[5:] for v in _values(attrs, "proxyAddresses") if str(v)[:5] == "SMTP:"]
        aliases = [
            str(v)[5:] for v in _values(attrs, "proxyAddresses") if str(v)[:5].lower() == "smtp:"
        ]
        for address in [*_values(attrs, "mail"), *primary, *aliases]:
            lowered = str(address).strip().lower()
            if lowered and lowered not in addresses:
                addresses.append(lowered)
        sid_raw = _values(raw, "objectSid")
        dn = str(item["dn"])
        return DirectoryEntry(
            dn=dn,
            cn=_first(attrs, "cn") or rdn_value(dn),
            kind="contact" if "contact" in classes else "user",
            addresses=addresses,
            sam_account_name=_first(attrs, "sAMAccountName"),
            user_principal_name=_first(attrs, "userPrincipalName"),
            object_sid=sid_to_string(bytes(sid_raw[0])) if sid_raw else None,
            groups=sorted(groups, key=lambda g: normalize_dn(g.dn)),
            fetched=time.time(),
        )

    def lookup(self, address: str) -> DirectoryEntry | None:
        """The user or contact owning ``address`` with all its groups, else ``None``."""
        cfg = self.config
        search_filter = address_filter(cfg, address)
        self.last_filter = search_filter
        found = self._search(search_filter, [*_ENTRY_ATTRIBUTES, cfg.member_of_attribute])
        if not found:
            return None
        if len(found) > 1:
            log.warning("%d directory entries own %s; using the first by DN", len(found), address)
        item = min(found, key=lambda i: normalize_dn(str(i["dn"])))
        attrs = item.get("attributes") or {}
        direct = [str(dn) for dn in _values(attrs, cfg.member_of_attribute)]
        return self._entry(item, self._groups_above(str(item["dn"]), direct))

    def _groups_above(self, dn: str, member_of: list[str]) -> list[DirectoryGroup]:
        """Every group containing ``dn``, directly or through other groups.

        memberOf (where the server keeps it) gives the direct groups at once; the ``member``
        attribute of groups is then walked upward one level per search, each group visited
        once, so a membership cycle ends the walk instead of looping.
        """
        cfg = self.config
        found: dict[str, DirectoryGroup] = {}
        frontier = [dn]
        for group_dn in member_of:
            key = normalize_dn(group_dn)
            found.setdefault(key, DirectoryGroup(dn=group_dn, cn=rdn_value(group_dn)))
            frontier.append(group_dn)
        seen = {normalize_dn(d) for d in frontier}
        while frontier:
            terms = "".join(f"({cfg.member_attribute}={escape_filter_chars(d)})" for d in frontier)
            frontier = []
            for item in self._search(f"(&{cfg.group_filter}(|{terms}))", ["cn"]):
                group_dn = str(item["dn"])
                key = normalize_dn(group_dn)
                cn = _first(item.get("attributes") or {}, "cn") or rdn_value(group_dn)
                found[key] = DirectoryGroup(dn=group_dn, cn=cn)
                if key not in seen:
                    seen.add(key)
                    frontier.append(group_dn)
        return list(found.values())

    def snapshot(self) -> tuple[list[DirectoryEntry], list[DirectoryGroup]]:
        """Every user and contact with an address, and every group, nesting resolved.

        Two paged searches (groups, then entries); nesting is resolved in memory from the
        groups' ``member`` values and the entries' ``memberOf``, cycle-safe.
        """
        cfg = self.config
        groups: dict[str, DirectoryGroup] = {}
        parents: dict[str, set[str]] = {}
        group_attrs = ["cn", cfg.member_attribute, cfg.member_of_attribute]
        for item in self._search(cfg.group_filter, group_attrs):
            attrs = item.get("attributes") or {}
            group_dn = str(item["dn"])
            key = normalize_dn(group_dn)
            groups[key] = DirectoryGroup(dn=group_dn, cn=_first(attrs, "cn") or rdn_value(group_dn))
            for member in _values(attrs, cfg.member_attribute):
                parents.setdefault(normalize_dn(str(member)), set()).add(key)
            for parent in _values(attrs, cfg.member_of_attribute):
                parents.setdefault(key, set()).add(normalize_dn(str(parent)))

        def closure(dn: str, direct: Iterable[str]) -> list[DirectoryGroup]:
            result: list[DirectoryGroup] = []
            seen: set[str] = set()
            stack = [*direct, *parents.get(normalize_dn(dn), ())]
            while stack:
                key = stack.pop()
                if key in seen:
                    continue
                seen.add(key)
                # A memberOf value outside base_dn or group_filter still names a group.
                group = groups.get(key) or DirectoryGroup(dn=key, cn=rdn_value(key))
                result.append(group)
                stack.extend(parents.get(key, ()))
            return result

        entries = []
        entry_filter = f"(&{cfg.user_filter}(|(mail=*)(proxyAddresses=*)))"
        for item in self._search(entry_filter, [*_ENTRY_ATTRIBUTES, cfg.member_of_attribute]):
            attrs = item.get("attributes") or {}
            direct = [normalize_dn(str(d)) for d in _values(attrs, cfg.member_of_attribute)]
            entry = self._entry(item, closure(str(item["dn"]), direct))
            if entry.addresses:
                entries.append(entry)
        return entries, list(groups.values())

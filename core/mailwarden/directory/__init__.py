"""Directory integration: addresses, users, contacts and nested groups from LDAP / AD.

:mod:`.client` talks to the server (ldap3), :mod:`.cache` keeps the answers in LMDB and
:mod:`.service` ties them together for the gateway: rules ask the cache, a periodic refresh
fills it, and a live lookup falls back to it when the server is unreachable. This package
imports ldap3 only in :mod:`.client`, so loading rules does not pay for it.
"""

from __future__ import annotations

from .names import group_key, normalize_dn

__all__ = ["group_key", "normalize_dn"]

"""How groups are named in rules: by CN (``group:Sales``) or by DN (``group:cn=Sales,ou=...``).

Both forms are turned into the same kind of key, so a rule compiled once compares plain
strings with the keys the cache stores for each address.
"""

from __future__ import annotations

import re

__all__ = ["group_key", "normalize_dn", "rdn_value"]

# A comma that separates RDNs: not escaped with a backslash.
_RDN_SPLIT = re.compile(r"(?<!\\),")


def normalize_dn(dn: str) -> str:
    """``dn`` in the form used for comparing: lower case, no spaces around ``,`` and ``=``.

    Attribute values in AD and OpenLDAP DNs compare case-insensitively for the naming
    attributes groups use (cn, ou, dc), so lower-casing is what the servers do too.
    """
    parts = []
    for rdn in _RDN_SPLIT.split(dn.strip()):
        name, sep, value = rdn.partition("=")
        parts.append(f"{name.strip()}{sep}{value.strip()}" if sep else rdn.strip())
    return ",".join(parts).lower()


def rdn_value(dn: str) -> str:
    """The value of the first RDN (``Sales`` for ``cn=Sales,ou=Groups,...``)."""
    first = _RDN_SPLIT.split(dn.strip(), maxsplit=1)[0]
    return first.partition("=")[2].strip().replace("\\", "") or first


def group_key(name: str) -> str:
    """The key a rule's ``group:NAME`` is compared with: ``dn:...`` for a DN, else ``cn:...``."""
    name = name.strip()
    if "=" in name:
        return "dn:" + normalize_dn(name)
    return "cn:" + name.lower()

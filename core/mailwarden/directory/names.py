"""Group and DN names, as :mod:`mailwarden.groupnames` defines them for rules and the cache."""

# The names live below the config (rule patterns compile group names at config load), while this
# package reads the config; the directory code keeps importing them under this name.
from __future__ import annotations

from ..groupnames import group_key, normalize_dn, rdn_value

__all__ = ["group_key", "normalize_dn", "rdn_value"]

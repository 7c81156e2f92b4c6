"""The SDK's semantic version and the check that refuses plugins built for another one.

The SDK follows semantic versioning: a plugin written for 1.x works with every 1.y (y >= x);
a new major version may change hook signatures or data types. A plugin states what it needs
with a class or module attribute ``requires_sdk`` holding a PEP 440 specifier, e.g.
``requires_sdk = ">=1.0,<2"``; the gateway refuses to load it otherwise, with a message that
says both versions.
"""

from __future__ import annotations

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

__all__ = ["SDK_VERSION", "IncompatibleSdk", "check_compatible"]

# 1.1: Verdict.content; 1.2: data_stores(host), StoreDescriptor.entries;
# 1.3: mailwarden_action hook, Action.remove_parts / replace_message, detect_type;
# 1.4: command_host for plugin commands;
# 1.5: mailwarden_hold hook, Host.resubmit, Verdict.sandbox "hold"/"skipped"/"deferred";
# 1.6: Verdict.headers;
# 1.7: mailwarden_quarantines hook, Quarantine, QuarantineEntry, Host.deliver;
# 1.8: Action.backup_id (the gateway keeps backups in its own store), config_option;
# 1.9: run_cpu_bound, INLINE_MAX_BYTES
# 1.10: INLINE_MAX_FIELDS, INLINE_MAX_SECONDS, offload.scanning; every hook under a time
#       budget, verdict and action hooks in a worker thread, observers on threads of their own
# 1.11: mailwarden_learn hook (spamd TELL and other clients that report mail)
# 1.12: mailwarden_sdk.shared (SharedState: the cluster's Redis state, or None)
SDK_VERSION = "1.12.0"


class IncompatibleSdk(Exception):
    """A plugin requires an SDK version this gateway does not provide."""


def check_compatible(plugin_name: str, requirement: str | None) -> None:
    """Raise :class:`IncompatibleSdk` unless ``requirement`` admits :data:`SDK_VERSION`.

    ``None`` (no ``requires_sdk`` declared) is accepted: such a plugin takes its chances, as
    plugins for pluggy-based hosts usually do.
    """
    if requirement is None:
        return
    try:
        spec = SpecifierSet(requirement)
    except InvalidSpecifier as exc:
        raise IncompatibleSdk(
            f"plugin {plugin_name!r} declares requires_sdk={requirement!r}, "
            "which is not a valid version specifier (example: '>=1.0,<2')"
        ) from exc
    if Version(SDK_VERSION) not in spec:
        raise IncompatibleSdk(
            f"plugin {plugin_name!r} requires mailwarden_sdk {requirement}, but this gateway "
            f"provides mailwarden_sdk {SDK_VERSION}; install a release of the plugin made for "
            f"SDK {Version(SDK_VERSION).major}.x or a mailwarden that matches the plugin"
        )

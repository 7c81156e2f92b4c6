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

# What each version added: CHANGELOG.md at the top of the repository ("SDK" sections).
SDK_VERSION = "1.21.0"


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

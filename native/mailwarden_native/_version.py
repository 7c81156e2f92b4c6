"""The native core's version, checked against the Python package's when the binding loads.

The build stamps the core with the package's version (native/build_native.py), so the two
differ only when the compiled extension is left over from another build: a core whose
structures or codes may not be the ones this Python code expects, which must not run.
"""

from __future__ import annotations

from importlib import metadata

from ._core import ffi, lib
from ._errors import NativeVersionError

_DISTRIBUTION = "mailwarden"


def core_version() -> str:
    """The version the loaded native core was built as (``mw_version()``)."""
    return ffi.string(lib.mw_version()).decode("ascii")


def package_version() -> str | None:
    """The installed Python package's version; None when running from an uninstalled tree."""
    try:
        return metadata.version(_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def check_core_version() -> None:
    """Raise NativeVersionError when the core and the package disagree."""
    core, package = core_version(), package_version()
    if package is not None and core != package:
        raise NativeVersionError(
            f"mailwarden_native: the compiled native core is version {core} but the Python "
            f"package is version {package}; rebuild the core (`make install` or "
            "`pip install -e .`)",
            function="mw_version",
        )

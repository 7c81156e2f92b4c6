"""The installed package's version, in a module of its own.

Modules that print or send the version import it from here rather than from the package:
``mailwarden/__init__.py`` imports the pipeline for library users, so importing the package
from inside the engine would tie every such module into a cycle through the pipeline.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("mailwarden")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

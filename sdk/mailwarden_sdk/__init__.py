"""mailwarden_sdk: everything a mailwarden plugin imports.

A plugin is a class (or module) with ``@hookimpl``-marked methods named after the specs in
:mod:`mailwarden_sdk.hookspecs`, registered in the ``mailwarden`` entry-point group::

    [project.entry-points.mailwarden]
    mydetector = "my_package:MyDetector"

The native MIME core and signature matcher are reached through this package too
(:func:`parse`, :class:`Matcher`), so a plugin never imports the ``mailwarden`` core.
"""

from mailwarden_native import Matcher, ParsedMessage, Part, parse

from .context import Host, ScanContext, plugin_data_dir
from .hookspecs import PROJECT_NAME, hookimpl, hookspec
from .stores import StoreDescriptor, WhenFull
from .types import (
    Action,
    ActionKind,
    AntivirusStatus,
    Category,
    Envelope,
    Finding,
    MessageEvent,
    SpamStatus,
    Verdict,
)

__all__ = [
    "PROJECT_NAME",
    "Action",
    "ActionKind",
    "AntivirusStatus",
    "Category",
    "Envelope",
    "Finding",
    "Host",
    "Matcher",
    "MessageEvent",
    "ParsedMessage",
    "Part",
    "ScanContext",
    "SpamStatus",
    "StoreDescriptor",
    "Verdict",
    "WhenFull",
    "hookimpl",
    "hookspec",
    "parse",
    "plugin_data_dir",
]

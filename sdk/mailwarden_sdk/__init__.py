"""mailwarden_sdk: everything a mailwarden plugin imports.

A plugin is a class (or module) with ``@hookimpl``-marked methods named after the specs in
:mod:`mailwarden_sdk.hookspecs`, registered in the ``mailwarden`` entry-point group::

    [project.entry-points.mailwarden]
    mydetector = "my_package:MyDetector"

The native MIME core and signature matcher are reached through this package too
(:func:`parse`, :func:`detect_type`, :class:`Matcher`, and since SDK 1.18
:func:`shingle_sketch` for MinHash sketches of text and :func:`ascii_words` and
:func:`unicode_words` for a tokenizer's words of text, since 1.20 :func:`paragraph_lines`
for text one paragraph a line, since 1.21 :class:`FlagExpressions` for expressions over
numbered flags, as antispam's metas, and :func:`code_point_bytes` for text as a byte per
character), so a plugin never imports the
``mailwarden`` core.
A plugin that keeps messages of its own offers them to the web interface as a
:class:`Quarantine` (:mod:`mailwarden_sdk.quarantines`).
An ``async`` hook with CPU work to do runs it through :func:`run_cpu_bound`
(:mod:`mailwarden_sdk.offload`): inline when small, in a thread when large.
A plugin that decides whether a sender may go on before its message is accepted (greylisting,
rate limits, allow lists) is a policy step (:mod:`mailwarden_sdk.policy`).
A plugin that keeps state every node of a cluster should see asks :func:`shared_state`
(:mod:`mailwarden_sdk.shared`).
:mod:`mailwarden_sdk.findings` has shorthands for common findings, and
:mod:`mailwarden_sdk.files` the atomic write a plugin's state files need; ``requires_sdk`` on a
plugin states which SDK versions it works with (see :mod:`mailwarden_sdk.version`).
"""

from mailwarden_native import (
    OP,
    FlagExpressions,
    Matcher,
    ParsedMessage,
    Part,
    ascii_words,
    code_point_bytes,
    detect_type,
    paragraph_lines,
    parse,
    shingle_sketch,
    unicode_words,
)

from . import files, findings
from .context import (
    Host,
    HostLoader,
    ScanContext,
    command_host,
    config_option,
    plugin_data_dir,
)
from .hookspecs import PROJECT_NAME, hookimpl, hookspec, nonblocking
from .offload import INLINE_MAX_BYTES, INLINE_MAX_FIELDS, INLINE_MAX_SECONDS, run_cpu_bound
from .policy import PolicyAction, PolicyRequest, PolicyStage, PolicyVerdict
from .quarantines import (
    QUARANTINE_ID,
    LearnLabel,
    Quarantine,
    QuarantineEntry,
    QuarantineError,
    QuarantineNotFound,
)
from .shared import SharedState, SharedStateUnavailable, shared_state
from .stash import Stash, StashKey
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
from .version import SDK_VERSION, IncompatibleSdk, check_compatible

__version__ = SDK_VERSION

__all__ = [
    "INLINE_MAX_BYTES",
    "INLINE_MAX_FIELDS",
    "INLINE_MAX_SECONDS",
    "OP",
    "PROJECT_NAME",
    "QUARANTINE_ID",
    "SDK_VERSION",
    "Action",
    "ActionKind",
    "AntivirusStatus",
    "Category",
    "Envelope",
    "Finding",
    "FlagExpressions",
    "Host",
    "HostLoader",
    "IncompatibleSdk",
    "LearnLabel",
    "Matcher",
    "MessageEvent",
    "ParsedMessage",
    "Part",
    "PolicyAction",
    "PolicyRequest",
    "PolicyStage",
    "PolicyVerdict",
    "Quarantine",
    "QuarantineEntry",
    "QuarantineError",
    "QuarantineNotFound",
    "ScanContext",
    "SharedState",
    "SharedStateUnavailable",
    "SpamStatus",
    "Stash",
    "StashKey",
    "StoreDescriptor",
    "Verdict",
    "WhenFull",
    "__version__",
    "ascii_words",
    "check_compatible",
    "code_point_bytes",
    "command_host",
    "config_option",
    "detect_type",
    "files",
    "findings",
    "hookimpl",
    "hookspec",
    "nonblocking",
    "paragraph_lines",
    "parse",
    "plugin_data_dir",
    "run_cpu_bound",
    "shared_state",
    "shingle_sketch",
    "unicode_words",
]

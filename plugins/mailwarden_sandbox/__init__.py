"""The built-in sandbox detector (the KATA role): external analysis, hold until verdict.

Objects (attachments, or whole messages) go to an analysis server: an ICAP service (RFC 3507)
or a submit-and-poll HTTP sandbox. Per rule, ``mirror`` sends copies and never delays mail;
``hold`` keeps the message in a bounded quarantine of its own until the verdict, then puts it
back through the pipeline with the verdict added (``Host.resubmit``): clean is delivered,
malicious gets the rule's ``malicious`` action, the gateway keeping its backup copy first
(``Action.backup_id``, SDK 1.8). The web
interface lists, shows, releases and deletes held messages through
:class:`SandboxQuarantineView` (``mailwarden_quarantines``, SDK 1.7).

Written only against ``mailwarden_sdk``, as a third-party detector would be. See
``docs/sandbox.md``. The modules, each importing only those below it: ``config`` (the
``[sandbox]`` section), ``store`` (the on-disk quarantine and verdict cache), ``objects`` (what
is sent, the findings), ``mirror`` (copies in mirror mode), ``watcher`` (following held
messages up), ``quarantine`` (hold, an admin's release or delete, the web view), ``cli``
(``mailwarden sandbox``) and ``plugin`` (the hooks). This package only re-exports.
"""

from __future__ import annotations

# ``X as X``: re-exported, importable from here as before the split.
from .cli import sandbox_command as sandbox_command
from .config import DETECTOR as DETECTOR
from .config import Policy as Policy
from .config import RuleSettings, SandboxConfig
from .plugin import PENDING as PENDING
from .plugin import ROOM as ROOM
from .plugin import SandboxPlugin
from .quarantine import SandboxQuarantineView

__all__ = ["RuleSettings", "SandboxConfig", "SandboxPlugin", "SandboxQuarantineView"]

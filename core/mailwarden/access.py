"""Permission names and the built-in roles: what a user of the web interface or the API may do.

Below both the config (which checks custom roles and group mappings against these names) and the
web package (which enforces them per route, :mod:`mailwarden.web.permissions`), so the engine
reads its config without importing the web interface.
"""

from __future__ import annotations

__all__ = [
    "AUTHENTICATED",
    "BUILTIN_ROLES",
    "CONTENT",
    "PERMISSIONS",
    "PUBLIC",
    "permissions_of",
]

PERMISSIONS = (
    "settings.view",
    "settings.edit",
    "rules.view",
    "rules.edit",
    "reports.view",
    "events.messages.view",
    "events.app.view",
    "events.auth.view",
    "messages.content.view",
    "queues.view",
    "queues.manage",
    "backup.view",
    "backup.manage",
    "diagnostics.get",
    "mta.view",
    "mta.edit",
    "users.manage",
)
#: Anyone, logged in or not.
PUBLIC = "public"
#: Any logged-in user or token, whatever its roles.
AUTHENTICATED = "authenticated"
#: Reading what a message says (its text, headers past the envelope summary, attachments,
#: the message itself as a download), on top of the permission of the store it is in.
CONTENT = "messages.content.view"

BUILTIN_ROLES: dict[str, frozenset[str]] = {
    "Administrator": frozenset(PERMISSIONS),
    "Security officer": frozenset(PERMISSIONS) - {"users.manage", "mta.edit"},
    # Runs the mail flow day to day: sees traffic and quarantines and releases mail, but does
    # not change how the gateway decides.
    "Operator": frozenset(
        {
            "reports.view",
            "events.messages.view",
            "queues.view",
            "queues.manage",
            # Deciding whether a held message is released means reading it.
            CONTENT,
            "backup.view",
            "rules.view",
            "mta.view",
        }
    ),
    # Reads everything an audit needs, changes nothing and never sees message bodies.
    "Auditor": frozenset(
        {
            "settings.view",
            "rules.view",
            "reports.view",
            "events.messages.view",
            "events.app.view",
            "events.auth.view",
            "queues.view",
            "backup.view",
            "mta.view",
        }
    ),
}


def permissions_of(
    roles: list[str] | tuple[str, ...], custom: dict[str, list[str]]
) -> frozenset[str]:
    """Every permission the ``roles`` grant (built-in ones and the config's custom roles)."""
    granted: set[str] = set()
    for role in roles:
        if role in BUILTIN_ROLES:
            granted |= BUILTIN_ROLES[role]
        elif role in custom:
            granted |= {p for p in custom[role] if p in PERMISSIONS}
    return frozenset(granted)

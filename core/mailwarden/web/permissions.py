"""Permissions, the built-in roles, and the one table saying what every route needs.

The application is built from :data:`ROUTES`: a handler without an entry here cannot be
mounted, so no route is ever reachable without a declared permission.
"""

from __future__ import annotations

from dataclasses import dataclass

# The names live below both the config (which checks custom roles against them) and the web
# interface, so that the engine loads its config without the web package.
from ..access import AUTHENTICATED, BUILTIN_ROLES, CONTENT, PERMISSIONS, PUBLIC, permissions_of

__all__ = [
    "AUTHENTICATED",
    "BUILTIN_ROLES",
    "CONTENT",
    "PERMISSIONS",
    "PUBLIC",
    "ROUTES",
    "RouteSpec",
    "permissions_of",
]

# Request body caps by route class (bytes): a body is refused with 413 while it streams in,
# before more than this is read. Logins and plain forms carry a few fields; JSON edits a
# section of the config; the rules are the one upload that can be long.
SMALL_BODY = 16 * 1024
JSON_BODY = 256 * 1024
RULES_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class RouteSpec:
    """One route: its path, methods, the handler's name and the permission it needs;
    ``content`` when it also shows what a message says (:data:`CONTENT`), ``max_body`` the
    largest request body it reads."""

    path: str
    methods: tuple[str, ...]
    handler: str
    permission: str
    content: bool = False
    max_body: int = SMALL_BODY

    @property
    def needs(self) -> tuple[str, ...]:
        """Every permission the route needs (none for public and any-login routes)."""
        if self.permission in (PUBLIC, AUTHENTICATED):
            return ()
        return (self.permission, CONTENT) if self.content else (self.permission,)


ROUTES: tuple[RouteSpec, ...] = (
    # Pages
    RouteSpec("/login", ("GET",), "login_page", PUBLIC),
    RouteSpec("/login", ("POST",), "login_form", PUBLIC),
    RouteSpec("/logout", ("POST",), "logout", AUTHENTICATED),
    RouteSpec("/", ("GET",), "dashboard_page", "reports.view"),
    RouteSpec("/events", ("GET",), "events_page", "events.messages.view"),
    # Before /events/{event_id}: routes match in this order.
    RouteSpec("/events/export", ("GET",), "events_export", "events.messages.view"),
    RouteSpec("/events/{event_id}", ("GET",), "event_page", "events.messages.view"),
    RouteSpec("/quarantine", ("GET",), "quarantine_page", "queues.view"),
    # Before /quarantine/{held_id}: routes match in this order.
    RouteSpec("/quarantine/bulk", ("POST",), "bulk_form", "queues.manage"),
    RouteSpec("/quarantine/{held_id}", ("GET",), "held_page", "queues.view", content=True),
    RouteSpec("/quarantine/{held_id}/release", ("POST",), "release_form", "queues.manage"),
    RouteSpec("/quarantine/{held_id}/delete", ("POST",), "delete_form", "queues.manage"),
    # Plugin quarantines (mailwarden_quarantines): spam, sandbox, any third party's.
    RouteSpec("/quarantines/{quarantine}", ("GET",), "plugin_quarantine_page", "queues.view"),
    RouteSpec("/quarantines/{quarantine}/bulk", ("POST",), "plugin_bulk_form", "queues.manage"),
    RouteSpec(
        "/quarantines/{quarantine}/{entry_id}",
        ("GET",),
        "plugin_entry_page",
        "queues.view",
        content=True,
    ),
    RouteSpec(
        "/quarantines/{quarantine}/{entry_id}/release",
        ("POST",),
        "plugin_release_form",
        "queues.manage",
    ),
    RouteSpec(
        "/quarantines/{quarantine}/{entry_id}/release-as-ham",
        ("POST",),
        "plugin_release_ham_form",
        "queues.manage",
    ),
    RouteSpec(
        "/quarantines/{quarantine}/{entry_id}/delete",
        ("POST",),
        "plugin_delete_form",
        "queues.manage",
    ),
    RouteSpec(
        "/quarantines/{quarantine}/{entry_id}/delete-as-spam",
        ("POST",),
        "plugin_delete_spam_form",
        "queues.manage",
    ),
    RouteSpec("/rules", ("GET",), "rules_page", "rules.view"),
    RouteSpec("/inventory", ("GET",), "inventory_page", "settings.view"),
    RouteSpec("/backup", ("GET",), "backup_page", "backup.view"),
    RouteSpec("/backup/{backup_id}", ("GET",), "backup_entry_page", "backup.view"),
    RouteSpec("/backup/{backup_id}/release", ("POST",), "backup_release_form", "backup.manage"),
    RouteSpec("/settings", ("GET",), "settings_page", "settings.view"),
    RouteSpec(
        "/settings/{section}", ("POST",), "settings_form", "settings.edit", max_body=JSON_BODY
    ),
    RouteSpec("/mta", ("GET",), "mta_page", "mta.view"),
    RouteSpec("/mta/{section}", ("POST",), "mta_form", "mta.edit", max_body=JSON_BODY),
    RouteSpec("/users", ("GET",), "users_page", "users.manage"),
    RouteSpec("/users/roles", ("POST",), "role_form", "users.manage", max_body=JSON_BODY),
    RouteSpec("/users/roles/{role}/delete", ("POST",), "role_delete_form", "users.manage"),
    RouteSpec("/users/tokens/{token_id}/revoke", ("POST",), "token_revoke_form", "users.manage"),
    RouteSpec("/logs/app", ("GET",), "app_log_page", "events.app.view"),
    RouteSpec("/logs/auth", ("GET",), "auth_log_page", "events.auth.view"),
    RouteSpec("/static/{name}", ("GET",), "static_file", PUBLIC),
    # The end user's digest links: the signed, expiring token is the permission (no login).
    RouteSpec("/digest/{token}", ("GET",), "digest_page", PUBLIC),
    RouteSpec("/digest/{token}", ("POST",), "digest_form", PUBLIC),
    # API
    RouteSpec("/api/health", ("GET",), "api_health", PUBLIC),
    # One console over every node (mailwarden.cluster.console); /cluster/v1 is for the other
    # nodes: no login, but refused unless HMAC-signed with the [cluster] secret.
    RouteSpec("/cluster", ("GET",), "cluster_page", "queues.view"),
    RouteSpec(
        "/cluster/quarantine/{held_id}/release", ("POST",), "cluster_release_form", "queues.manage"
    ),
    RouteSpec("/api/cluster/events", ("GET",), "api_cluster_events", "events.messages.view"),
    RouteSpec("/api/cluster/quarantine", ("GET",), "api_cluster_quarantine", "queues.view"),
    RouteSpec(
        "/api/cluster/quarantine/{held_id}/release",
        ("POST",),
        "api_cluster_release",
        "queues.manage",
    ),
    RouteSpec(
        "/api/cluster/quarantine/{held_id}", ("DELETE",), "api_cluster_delete", "queues.manage"
    ),
    RouteSpec("/api/cluster/config", ("GET",), "api_cluster_config", "settings.view"),
    RouteSpec("/api/cluster/config/push", ("POST",), "api_cluster_config_push", "settings.edit"),
    RouteSpec("/cluster/v1/config", ("GET",), "node_config", PUBLIC),
    RouteSpec("/cluster/v1/config", ("POST",), "node_config_push", PUBLIC, max_body=JSON_BODY),
    RouteSpec("/cluster/v1/events", ("GET",), "node_events", PUBLIC),
    RouteSpec("/cluster/v1/quarantine", ("GET",), "node_quarantine", PUBLIC),
    RouteSpec("/cluster/v1/quarantine/{held_id}/release", ("POST",), "node_release", PUBLIC),
    RouteSpec("/cluster/v1/quarantine/{held_id}/delete", ("POST",), "node_delete", PUBLIC),
    RouteSpec("/api/login", ("POST",), "api_login", PUBLIC),
    RouteSpec("/api/me", ("GET",), "api_me", AUTHENTICATED),
    RouteSpec("/api/openapi.json", ("GET",), "api_openapi", AUTHENTICATED),
    RouteSpec("/api/events", ("GET",), "api_events", "events.messages.view"),
    RouteSpec("/api/stats", ("GET",), "api_stats", "reports.view"),
    RouteSpec("/api/logs/app", ("GET",), "api_app_log", "events.app.view"),
    RouteSpec("/api/logs/auth", ("GET",), "api_auth_log", "events.auth.view"),
    RouteSpec("/api/quarantine", ("GET",), "api_quarantine", "queues.view"),
    RouteSpec("/api/quarantines", ("GET",), "api_quarantines", "queues.view"),
    RouteSpec("/api/quarantine/{held_id}", ("GET",), "api_held", "queues.view", content=True),
    RouteSpec(
        "/api/quarantine/{held_id}/raw", ("GET",), "api_held_raw", "queues.manage", content=True
    ),
    RouteSpec("/api/quarantine/{held_id}/release", ("POST",), "api_release", "queues.manage"),
    RouteSpec("/api/quarantine/{held_id}", ("DELETE",), "api_delete", "queues.manage"),
    RouteSpec("/api/quarantines/{quarantine}", ("GET",), "api_plugin_quarantine", "queues.view"),
    RouteSpec(
        "/api/quarantines/{quarantine}/{entry_id}",
        ("GET",),
        "api_plugin_entry",
        "queues.view",
        content=True,
    ),
    RouteSpec(
        "/api/quarantines/{quarantine}/{entry_id}/raw",
        ("GET",),
        "api_plugin_entry_raw",
        "queues.manage",
        content=True,
    ),
    RouteSpec(
        "/api/quarantines/{quarantine}/{entry_id}/release",
        ("POST",),
        "api_plugin_release",
        "queues.manage",
    ),
    RouteSpec(
        "/api/quarantines/{quarantine}/{entry_id}/release-as-ham",
        ("POST",),
        "api_plugin_release_ham",
        "queues.manage",
    ),
    RouteSpec(
        "/api/quarantines/{quarantine}/{entry_id}/delete-as-spam",
        ("POST",),
        "api_plugin_delete_spam",
        "queues.manage",
    ),
    RouteSpec(
        "/api/quarantines/{quarantine}/{entry_id}",
        ("DELETE",),
        "api_plugin_delete",
        "queues.manage",
    ),
    RouteSpec("/api/rules", ("GET",), "api_rules", "rules.view"),
    RouteSpec("/api/rules", ("PUT",), "api_rules_put", "rules.edit", max_body=RULES_BODY),
    RouteSpec("/api/settings", ("GET",), "api_settings", "settings.view"),
    RouteSpec(
        "/api/settings/{section}", ("PUT",), "api_settings_put", "settings.edit", max_body=JSON_BODY
    ),
    RouteSpec("/api/mta/{section}", ("PUT",), "api_mta_put", "mta.edit", max_body=JSON_BODY),
    RouteSpec("/api/inventory", ("GET",), "api_inventory", "settings.view"),
    RouteSpec("/api/backup", ("GET",), "api_backups", "backup.view"),
    RouteSpec("/api/backup/{backup_id}", ("GET",), "api_backup", "backup.view"),
    RouteSpec(
        "/api/backup/{backup_id}/raw", ("GET",), "api_backup_raw", "backup.manage", content=True
    ),
    RouteSpec("/api/backup/{backup_id}/release", ("POST",), "api_backup_release", "backup.manage"),
    RouteSpec("/api/signatures", ("GET",), "api_signatures", "reports.view"),
    RouteSpec("/api/users", ("GET",), "api_users", "users.manage"),
    RouteSpec("/api/users/groups", ("PUT",), "api_groups_put", "users.manage", max_body=JSON_BODY),
    RouteSpec("/api/roles", ("GET",), "api_roles", "users.manage"),
    RouteSpec("/api/roles/{role}", ("PUT",), "api_role_put", "users.manage", max_body=JSON_BODY),
    RouteSpec("/api/roles/{role}", ("DELETE",), "api_role_delete", "users.manage"),
    RouteSpec("/api/tokens", ("GET",), "api_tokens", "users.manage"),
    RouteSpec("/api/tokens", ("POST",), "api_token_create", "users.manage"),
    RouteSpec("/api/tokens/{token_id}", ("DELETE",), "api_token_revoke", "users.manage"),
)

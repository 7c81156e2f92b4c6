"""``mailwarden web``: accounts and tokens of the web interface, from the shell."""

from __future__ import annotations

import os
import pwd

import click

from ..clihome import home_config_path
from ..config import load_config
from ..errors import MailwardenError
from ..plugins import build_plugin_manager
from ..stores.applog import ApplicationLog
from .audit import AuditLog
from .auth import WebAuth
from .permissions import BUILTIN_ROLES

__all__ = ["web"]


def _auth(config_path: str | None) -> tuple[WebAuth, AuditLog]:
    """The accounts, and the audit log that records changes made from the shell (the web's
    copy and the application log, under the name of the system user who ran the command)."""
    plugins = build_plugin_manager()
    try:
        config = load_config(home_config_path(config_path), plugins.config_schemas())
    except MailwardenError as exc:
        raise click.ClickException(str(exc)) from exc
    cfg = config.web
    auth = WebAuth(
        config.home / "web",
        session_seconds=cfg.session_hours * 3600,
        custom_roles=cfg.roles,
        login_attempts=cfg.login_attempts,
    )
    stores = config.stores
    app_log = ApplicationLog(
        config.path_in_home(stores.app_log_path),
        retention_days=stores.app_log_retention_days,
        max_bytes=stores.app_log_max_bytes,
    )
    audit = AuditLog(
        config.home / "web" / "audit.jsonl", app_log=app_log, max_bytes=stores.audit_max_bytes
    )
    return auth, audit


def _check_roles(auth: WebAuth, roles: tuple[str, ...]) -> None:
    """Refuse a role that is neither built in nor in ``[web] roles``, listing the valid ones
    (the web interface would otherwise grant an account nothing, silently)."""
    valid = sorted({*BUILTIN_ROLES, *auth.custom_roles})
    unknown = [role for role in roles if role not in valid]
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)} is not a role; roles: {', '.join(valid)}",
            param_hint="'--role'",
        )


def _shell_user() -> str:
    return "cli:" + pwd.getpwuid(os.getuid()).pw_name


@click.group()
def web() -> None:
    """Accounts and API tokens of the web interface."""


@web.command("password")
@click.option("--user", default="admin", show_default=True, help="Local account name.")
@click.option("--role", "roles", multiple=True, help="Roles of a new account (repeatable).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
@click.password_option(help="The new password (asked twice when not given).")
def web_password(user: str, roles: tuple[str, ...], config_path: str | None, password: str) -> None:
    """Set a local account's password (the admin's, or a new account with --role)."""
    auth, audit = _auth(config_path)
    _check_roles(auth, roles)
    try:
        auth.set_password(user, password, roles=list(roles) if roles else None)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    audit.write("account.password", _shell_user(), account=user, roles=list(roles) or None)
    click.echo(f"password of {user} set")


@web.command("token")
@click.argument("name")
@click.option("--role", "roles", multiple=True, required=True, help="Roles the token gets.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file.")
def web_token(name: str, roles: tuple[str, ...], config_path: str | None) -> None:
    """Make an API token for automation; it is printed once, only its hash is kept."""
    auth, audit = _auth(config_path)
    _check_roles(auth, roles)
    try:
        token = auth.create_token(name, list(roles))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    audit.write("token.create", _shell_user(), token_name=name, roles=list(roles))
    click.echo(token)

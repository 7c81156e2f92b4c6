"""What every route handler shares: the gateway, accounts and sessions, the audit log,
the templates, the digest signer and the config as its file says now."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import msgspec
from jinja2 import Environment, select_autoescape
from jinja2.loaders import DictLoader

from ..cluster.console import Console
from ..config import Config, load_config
from ..errors import ConfigError
from .audit import AuditLog
from .auth import WebAuth
from .digest import DigestSigner
from .signatures import SignatureInfo

if TYPE_CHECKING:
    from ..pipeline import Gateway
    from .route import Route

__all__ = ["WebState", "inventory_view", "web_auth"]

log = logging.getLogger(__name__)


def web_auth(gateway: Gateway) -> WebAuth:
    """The gateway's web accounts and session keys (``<home>/web``); creates the session
    secret on first use."""
    cfg = gateway.config.web
    return WebAuth(
        gateway.config.home / "web",
        session_seconds=cfg.session_hours * 3600,
        custom_roles=cfg.roles,
        login_attempts=cfg.login_attempts,
        groups=cfg.groups,
    )


class WebState:
    """What the handlers share: the gateway, accounts and sessions, the audit log."""

    def __init__(self, gateway: Gateway, *, secure_cookies: bool) -> None:
        self.gateway = gateway
        self.auth = web_auth(gateway)
        self.audit = AuditLog(
            gateway.config.home / "web" / "audit.jsonl",
            app_log=gateway.stores.app_log,
            auth_log=gateway.stores.auth_log,
            max_bytes=gateway.config.stores.audit_max_bytes,
        )
        self.secure_cookies = secure_cookies
        # Directory sessions: when each was last found still backed by its groups (per
        # worker; monotonic seconds by session id), and how often that is asked again.
        self.directory_checked: dict[str, float] = {}
        self.directory_recheck = 300.0
        self.templates = _templates()
        self.templates.globals["cluster_nodes"] = bool(gateway.config.cluster.nodes)
        # The one console over every node (routes/cluster.py); a bad [cluster] secret stops the
        # start here.
        self.cluster_console = Console(gateway.config)
        self.signatures = SignatureInfo(gateway)
        self.digest = DigestSigner(gateway.config.home / "web")
        self.digest_task: asyncio.Task[None] | None = None
        # The route table the application was built from (the OpenAPI document lists it).
        self.routes: tuple[Route, ...] = ()
        # The config as its file says now: roles and group mappings apply at once (in every
        # worker, which each see the file change), other sections at the next start.
        self.file_config: Config = gateway.config
        self._config_mtime = self._mtime()

    def start_digests(self) -> asyncio.Task[None] | None:
        """Send the end users' quarantine digests every ``[web] digest_hours`` from now on
        (each worker asks; one sends, see :meth:`send_due_digests`)."""
        if not self.gateway.config.web.digest_hours:
            return None
        self.digest_task = asyncio.create_task(self._digest_loop())
        return self.digest_task

    async def _digest_loop(self) -> None:
        while True:
            try:
                await self.send_due_digests()
            except Exception:
                log.exception("sending the quarantine digests failed; trying again later")
            await asyncio.sleep(60)

    async def send_due_digests(self, now: float | None = None) -> dict[str, str] | None:
        """Send the digests if ``digest_hours`` have passed since the last were sent (by any
        worker: a locked stamp file under ``web/``); ``None`` when not due or another worker
        is sending, else where each recipient's went."""
        import fcntl

        from .digest import send_digests

        cfg = self.gateway.config.web
        now = time.time() if now is None else now
        stamp = self.gateway.config.home / "web" / "digest-sent"
        stamp.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(stamp, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            last = float(text) if text.replace(".", "", 1).isdigit() else 0.0
            period = cfg.digest_hours * 3600
            if now - last < period:
                return None
            hostname = self.gateway.config.gateway.hostname
            sent = await send_digests(
                self.gateway,
                self.digest,
                base_url=cfg.digest_url,
                sender=cfg.digest_from or f"postmaster@{hostname}",
                since=last or now - period,
                days=cfg.digest_link_days,
            )
            os.ftruncate(fd, 0)
            # repr: the exact float, so "due" compares the very time written (3 decimals
            # rounded up made a digest a day later look not due yet).
            os.pwrite(fd, f"{now!r}\n".encode("ascii"), 0)
            self.audit.write("digest.sent", "mailwarden", recipients=len(sent))
            return sent
        finally:
            os.close(fd)

    def _mtime(self) -> int | None:
        source = self.gateway.config.source
        try:
            return os.stat(source).st_mtime_ns if source else None
        except OSError:
            return None

    def refresh(self) -> None:
        """Re-read the config file if it changed: custom roles and group mappings."""
        mtime = self._mtime()
        if mtime is None or mtime == self._config_mtime:
            return
        self._config_mtime = mtime
        source = self.gateway.config.source
        try:
            config = load_config(source, self.gateway.plugins.config_schemas())
        except ConfigError as exc:
            log.warning("config file changed but does not load; keeping roles: %s", exc)
            return
        self.file_config = config
        self.auth.custom_roles = config.web.roles
        self.auth.groups = dict(config.web.groups)


def _templates() -> Environment:
    folder = files("mailwarden.web").joinpath("templates")
    sources = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".html")
    }
    return Environment(loader=DictLoader(sources), autoescape=select_autoescape(default=True))


def inventory_view(state: WebState) -> Any:
    """The data inventory: every store of user data with its limits and current size."""
    from ..inventory import inventory

    return msgspec.to_builtins(inventory(state.gateway.config, state.gateway.plugins))

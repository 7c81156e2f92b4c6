"""Small text helpers shared by the command line and the start-up announcements."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config

__all__ = ["busy_listeners", "hostport", "listeners"]


def hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:2525``) as URLs need."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def listeners(cfg: Config) -> list[tuple[str, str, int]]:
    """Every TCP listener ``serve`` opens: (name, address, port)."""
    found: list[tuple[str, str, int]] = []
    if cfg.smtp.enabled:
        found.append(("smtp", cfg.smtp.listen, cfg.smtp.port))
        if cfg.smtp.tls_port:
            found.append(("smtps", cfg.smtp.listen, cfg.smtp.tls_port))
    if cfg.web.enabled:
        found.append(("web", cfg.web.listen, cfg.web.port))
    if cfg.milter.enabled and not cfg.milter.unix_socket:
        found.append(("milter", cfg.milter.listen, cfg.milter.port))
    if cfg.content_filter.enabled:
        found.append(("filter", cfg.content_filter.listen, cfg.content_filter.port))
    if cfg.metrics.port:
        found.append(("metrics", cfg.metrics.listen, cfg.metrics.port))
    return found


def busy_listeners(cfg: Config) -> list[str]:
    """The listeners whose address cannot be bound now, each as ``name address (reason)``:
    what a bind error at start-up is about, found by trying each address once."""
    busy: list[str] = []
    for name, host, port in listeners(cfg):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host.strip("[]"), port))
            except OSError as exc:
                busy.append(f"{name} listener {hostport(host, port)} ({exc.strerror or exc})")
    return busy

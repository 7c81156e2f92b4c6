"""Test-only guard: traffic from the suite stays on 127.0.0.1.

The suite promises that every packet it causes goes to loopback. A default configuration can
quietly break that (the system resolver, a relay host left at its default), so the promise is
enforced rather than hoped for: ``tests/conftest.py`` installs this guard in the pytest process
and puts this folder first on ``PYTHONPATH``, so every Python process the tests start (``mailwarden
serve``, the service helpers) imports it as ``sitecustomize`` too. A connection or datagram to any
other address is refused with ``ENETUNREACH`` (what the code would meet on an offline host) and
written to ``$MAILWARDEN_NETGUARD_LOG``; the session fails if that file is not empty.

A test that needs a client on another address (the SMTP relay-control test) builds network
namespaces of its own joined by a veth pair, which reach nothing outside them. It names them
in ``$MAILWARDEN_NETGUARD_NETNS`` (``ip netns`` names) and their networks in
``$MAILWARDEN_NETGUARD_NETNS_NETS``; those addresses are allowed only to a thread that is inside
one of those namespaces, so everywhere else the rule stays "loopback only".

The host's resolver is the one exception made in advance: the tests run as if on a machine whose
``/etc/resolv.conf`` names 127.0.0.1 (``$MAILWARDEN_NETGUARD_RESOLV``, on the port in
``$MAILWARDEN_NETGUARD_DNS_PORT``, where the session's empty zone server answers NXDOMAIN at once),
so a gateway left on its default "use the system resolver" asks loopback instead of the
developer's or CI's real resolver. Tests of DNS behaviour configure their own
servers as an admin would, and are untouched by this.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from typing import Any

_LOCAL_NAMES = {"localhost", "localhost.localdomain", ""}


def _loopback(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths and abstract names never leave the host
    host = str(address[0]).split("%", 1)[0]
    if host in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name would need a lookup that leaves the host
    return ip.is_loopback or ip.is_unspecified or _test_namespace_address(ip)


def _test_namespace_address(ip: Any) -> bool:
    names = os.environ.get("MAILWARDEN_NETGUARD_NETNS", "")
    nets = os.environ.get("MAILWARDEN_NETGUARD_NETNS_NETS", "")
    if not names or not nets:
        return False
    if not any(ip in ipaddress.ip_network(n.strip()) for n in nets.split(",") if n.strip()):
        return False
    try:
        mine = os.stat("/proc/thread-self/ns/net").st_ino
        return any(
            os.stat(f"/run/netns/{name.strip()}").st_ino == mine
            for name in names.split(",")
            if name.strip()
        )
    except OSError:
        return False


def _refuse(address: Any) -> None:
    log = os.environ.get("MAILWARDEN_NETGUARD_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as out:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?")
            argv = " ".join(sys.argv)[:160]
            out.write(f"{test} | pid {os.getpid()} {argv!r} -> {address!r}\n")
    raise OSError(errno.ENETUNREACH, f"tests send to 127.0.0.1 only, not {address!r}")


def install() -> None:
    """Wrap the socket calls that choose a destination (idempotent)."""
    cls = socket.socket
    if getattr(cls, "_mailwarden_netguard", False):
        return
    connect, connect_ex, sendto = cls.connect, cls.connect_ex, cls.sendto

    def guarded_connect(self: socket.socket, address: Any) -> None:
        if not _loopback(address):
            _refuse(address)
        connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        if not _loopback(address):
            _refuse(address)
        return connect_ex(self, address)

    def guarded_sendto(self: socket.socket, data: Any, *args: Any) -> int:
        if args and not _loopback(args[-1]):
            _refuse(args[-1])
        return sendto(self, data, *args)  # type: ignore[call-overload, no-any-return]

    cls.connect = guarded_connect  # type: ignore[method-assign]
    cls.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    cls.sendto = guarded_sendto  # type: ignore[method-assign, assignment]
    cls._mailwarden_netguard = True  # type: ignore[attr-defined]
    _install_loopback_resolver()


def _install_loopback_resolver() -> None:
    """Make dnspython read the loopback resolv.conf (idempotent; needs the two variables)."""
    resolv = os.environ.get("MAILWARDEN_NETGUARD_RESOLV")
    try:
        import dns.resolver
    except ImportError:  # a Python without dnspython (apt's hooks): nothing to redirect
        return
    base = dns.resolver.BaseResolver
    if not resolv or getattr(base, "_mailwarden_netguard", False):
        return
    read = base.read_resolv_conf

    def read_loopback(self: Any, f: Any) -> None:
        if str(f) == "/etc/resolv.conf":
            # Nameservers read next take the resolver's port; read now, as the pytest process
            # learns it only once its zone server is up.
            self.port = int(os.environ.get("MAILWARDEN_NETGUARD_DNS_PORT") or 53)
            f = resolv
        read(self, f)

    base.read_resolv_conf = read_loopback  # type: ignore[method-assign]
    base._mailwarden_netguard = True  # type: ignore[attr-defined]


if os.environ.get("MAILWARDEN_NETGUARD_LOG"):
    install()

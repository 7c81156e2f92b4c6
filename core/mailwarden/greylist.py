"""Greylisting: the first attempt of a new (sender, recipient, client network) is deferred.

Legitimate MTAs retry a 4xx; much bulk and botnet software does not. A triplet seen for the
first time gets ``451 4.7.1``; the same triplet retried after ``delay`` (and within
``retry_window`` of the first attempt) is accepted and then passes at once for
``pass_expiry`` after its last message. The client is taken as its /24 (IPv4) or /64 (IPv6)
because large senders retry from another host of the same pool. Triplets are stored as
hashes under ``gl:`` in the policy state (:mod:`mailwarden.sharedstate`), so with Redis a
retry that reaches another node is recognised there.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Callable

from .config import GreylistingConfig
from .policy import in_domains
from .sharedstate import StateBackend

__all__ = ["Greylist", "client_network", "in_networks"]

_PASSED = "pass"


def client_network(address: str, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """The network ``address`` is counted as (``192.0.2.0/24``); the text itself when it is
    not an IP address (a UNIX socket client)."""
    ip = _ip(address)
    if ip is None:
        return address
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def in_networks(
    address: str | None, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether ``address`` (an IPv4-mapped IPv6 address counts as IPv4) is in ``networks``."""
    ip = _ip(address) if address and networks else None
    return ip is not None and any(ip in network for network in networks)


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``address`` as an IP address (an IPv4-mapped IPv6 address as IPv4), else None."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _domain_allowed(sender: str, domains: list[str]) -> bool:
    # The same matching as [gateway] local_domains (".example.org": with subdomains).
    domain = sender.rpartition("@")[2].lower()
    return bool(domain) and in_domains(domain, [entry.lower() for entry in domains])


class Greylist:
    """The greylisting step; :meth:`check` per recipient."""

    def __init__(
        self,
        config: GreylistingConfig,
        state: StateBackend,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.state = state
        self.clock = clock
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in config.allow_networks]

    def exempt(
        self, sender: str, client: str | None, *, authenticated: bool, trusted: bool
    ) -> bool:
        """Whether this client or sender is never greylisted."""
        return (
            authenticated
            or (trusted and self.config.skip_trusted)
            or in_networks(client, self.allowed)
            or _domain_allowed(sender, self.config.allow_domains)
        )

    def key(self, sender: str, recipient: str, client: str | None) -> str:
        cfg = self.config
        network = client_network(client or "", cfg.ipv4_prefix, cfg.ipv6_prefix)
        triplet = "\0".join((sender.lower(), recipient.lower(), network))
        return "gl:" + hashlib.blake2b(triplet.encode(), digest_size=16).hexdigest()

    async def check(self, sender: str, recipient: str, client: str | None) -> float | None:
        """``None`` when the triplet may pass now, else the seconds left before a retry can."""
        cfg = self.config
        key = self.key(sender, recipient, client)
        now = self.clock()
        # Each message keeps a known triplet passing (rspamd and postgrey do the same), in the
        # same round trip as the read.
        value = await self.state.get_renewing(key, _PASSED, cfg.pass_expiry)
        if value == _PASSED:
            return None
        if value is None:
            # only_new: when another node took the first attempt a moment ago, its time stays.
            await self.state.put(key, repr(now), cfg.retry_window, only_new=True)
            return cfg.delay
        try:
            first = float(value)
        except ValueError:
            first = now
        waited = now - first
        if waited >= cfg.delay:
            await self.state.put(key, _PASSED, cfg.pass_expiry)
            return None
        return cfg.delay - waited

    @staticmethod
    def reply(left: float) -> str:
        """The SMTP reply for a deferred triplet."""
        return (
            f"451 4.7.1 Greylisted: this is a first attempt, please try again in "
            f"{max(1, round(left))} seconds"
        )

"""Delivery of accepted mail: the spool-driven queue, SMTP relay to a next hop, and DSNs."""

from __future__ import annotations

from .dsn import build_dsn
from .queue import DeliveryQueue
from .relay import RelayResult, parse_next_hop, send

__all__ = ["DeliveryQueue", "RelayResult", "build_dsn", "parse_next_hop", "send"]

"""The reputation cache's second level: the cluster's Redis (``mailwarden_sdk.shared_state``).

Each node keeps its LMDB cache first (capped per node, ``cache_max_entries``). A lookup missing
there is looked for in Redis before any backend is asked, and a backend's answer goes to both,
so one node's lookup saves every other node the same question for the answer's lifetime.
A value is ``<expiry> <answer JSON>``: the node that finds it caches it for what is left.
Keys are the lookup keys hashed (they hold client addresses and URL hashes).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence

import msgspec

from mailwarden_sdk import SharedState, SharedStateUnavailable

from .cache import Answer

__all__ = ["share_answers", "shared_answers"]

log = logging.getLogger(__name__)

_PREFIX = "reputation:"
_decode = msgspec.json.Decoder(Answer).decode


def _key(lookup: str) -> str:
    return _PREFIX + hashlib.blake2b(lookup.encode(), digest_size=16).hexdigest()


async def shared_answers(
    shared: SharedState | None, keys: Sequence[str]
) -> dict[str, tuple[Answer, float]]:
    """The unexpired answers Redis has for ``keys``, each with its seconds left; ``{}``
    without shared state or when it does not answer (the backends are asked instead)."""
    if shared is None or not keys:
        return {}
    try:
        values = await shared.get_many([_key(k) for k in keys])
    except SharedStateUnavailable:
        return {}
    now = time.time()
    found: dict[str, tuple[Answer, float]] = {}
    for key, value in zip(keys, values, strict=True):
        if value is None:
            continue
        expiry, _, body = value.partition(" ")
        try:
            left, answer = float(expiry) - now, _decode(body)
        except (ValueError, msgspec.DecodeError):
            continue  # not ours, or damaged: asked again
        if left > 0:
            found[key] = (answer, left)
    return found


async def share_answers(
    shared: SharedState | None, answers: Mapping[str, tuple[Answer, float]]
) -> None:
    """Put the backends' fresh ``answers`` (answer, ttl) in Redis for the other nodes."""
    if shared is None or not answers:
        return
    now = time.time()
    by_ttl: dict[float, dict[str, str]] = {}
    for key, (answer, ttl) in answers.items():
        value = f"{now + ttl:.3f} {msgspec.json.encode(answer).decode()}"
        by_ttl.setdefault(ttl, {})[_key(key)] = value
    try:
        for ttl, values in by_ttl.items():
            await shared.put_many(values, ttl)
    except SharedStateUnavailable as exc:
        log.info("reputation: answers not shared (%s); cached on this node", exc)

"""``mailwarden antispam rules update``: a signed rule channel, fetched the way sa-update does.

A channel is two files at the configured ``update_url``: a gzip tarball of ``*.cf`` rule
files and, at the same URL plus ``.sig``, the raw 64-byte Ed25519 signature of the tarball's
bytes. The key is the admin's (``update_public_key``, base64 of the 32-byte public key). The
update is refused, and the rules in use stay, when the channel cannot be reached, is
unsigned, the signature does not verify, the tarball is damaged or holds anything but
``*.cf`` files, or the rules do not load. A good channel is unpacked beside the old rules and
switched to by renaming one symlink (``current``); a running gateway sees the switch and
loads the new rules (see ``AntispamPlugin``), as a restart would.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .rules import load_rules

__all__ = ["MAX_CHANNEL_BYTES", "UpdateError", "UpdateResult", "current_rules", "update_rules"]

# A rule channel is text: tens of kilobytes to a few megabytes (SpamAssassin's is ~1 MB).
MAX_CHANNEL_BYTES = 32 << 20
CURRENT = "current"


class UpdateError(Exception):
    """Why an update was refused; the rules in use were left as they were."""


@dataclass(frozen=True)
class UpdateResult:
    """What ``update_rules`` did: ``changed`` is False when the channel had nothing new."""

    version: str
    rules: int
    changed: bool
    path: Path


def current_rules(root: Path) -> Path | None:
    """The directory of the installed channel rules, or None before the first update."""
    link = root / CURRENT
    try:
        target = os.readlink(link)
    except OSError:
        return None
    path = root / target
    return path if path.is_dir() else None


def _public_key(text: str) -> Ed25519PublicKey:
    if not text:
        raise UpdateError("no update_public_key configured: an unsigned channel is never used")
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise UpdateError(
            f"update_public_key is not a base64 Ed25519 public key (32 bytes): {exc}"
        ) from exc


def _fetch(client: httpx.Client, url: str, what: str) -> bytes:
    try:
        with client.stream("GET", url) as response:
            if response.status_code == 404 and what == "signature":
                raise UpdateError(f"the channel is unsigned ({url}: 404): refused")
            if response.status_code != 200:
                raise UpdateError(f"{what} {url}: HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_CHANNEL_BYTES:
                    raise UpdateError(f"{what} {url}: larger than {MAX_CHANNEL_BYTES} bytes")
            if declared is not None and declared.isdigit() and int(declared) != len(body):
                raise UpdateError(f"{what} {url}: truncated ({len(body)} of {declared} bytes)")
            return bytes(body)
    except httpx.RemoteProtocolError as exc:
        raise UpdateError(f"{what} {url}: truncated ({exc})") from exc
    except httpx.HTTPError as exc:
        raise UpdateError(f"the channel is unreachable ({url}): {exc}") from exc


def _unpack(tarball: bytes, into: Path) -> list[str]:
    names: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isdir() and name in ("", "."):
                    continue
                # Only plain .cf files at the top: no paths, links or devices from a channel.
                if not member.isfile() or "/" in name or not name.endswith(".cf"):
                    raise UpdateError(f"the channel holds {member.name!r}: only *.cf files")
                source = archive.extractfile(member)
                if source is None:
                    raise UpdateError(f"unreadable member {member.name!r}")
                (into / name).write_bytes(source.read())
                names.append(name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UpdateError(f"the channel's tarball is damaged: {exc}") from exc
    if not names:
        raise UpdateError("the channel holds no *.cf rule files")
    return names


def update_rules(url: str, public_key: str, root: Path, timeout: float = 30.0) -> UpdateResult:
    """Fetch, verify, unpack and switch to the channel at ``url``; see the module docs.

    Raises :class:`UpdateError` for every refusal; the installed rules are then untouched.
    """
    if not url:
        raise UpdateError("no update_url configured")
    key = _public_key(public_key)
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        tarball = _fetch(client, url, "rules")
        signature = _fetch(client, url + ".sig", "signature")
    try:
        key.verify(signature, tarball)
    except InvalidSignature:
        raise UpdateError(
            "bad signature: the channel was not signed by the configured key"
        ) from None
    version = hashlib.sha256(tarball).hexdigest()[:16]
    name = f"v-{version}"
    root.mkdir(parents=True, exist_ok=True)
    installed = current_rules(root)
    if installed is not None and installed.name == name:
        count = len(load_rules([installed], engine="re").rules)
        return UpdateResult(version, count, False, installed)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        _unpack(tarball, staging)
        ruleset = load_rules([staging], engine="re")
        if not ruleset.rules:
            raise UpdateError("the channel's rule files define no rules")
        if ruleset.skipped.get("invalid"):
            raise UpdateError(f"{ruleset.skipped['invalid']} rule lines do not parse")
        target = root / name
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # The switch is one rename of a symlink: a reader sees the old rules or the new, whole.
    link = root / f".{CURRENT}.{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(name)
    link.replace(root / CURRENT)
    for old in root.glob("v-*"):
        if old.name not in (name, installed.name if installed else ""):
            shutil.rmtree(old, ignore_errors=True)  # the one before stays for a rollback
    return UpdateResult(version, len(ruleset.rules), True, target)

"""Signature updates: fetch a signed set from a directory or an HTTP(S) mirror, verify it,
compile it, and swap it in atomically.

A mirror is a directory (local, or served over HTTP(S)) holding ``manifest.json``::

    {"version": "2026112801", "files": {"main.ndb": "<sha256 hex>", "daily.hdb": "..."}}

next to the files it names, and ``manifest.json.sig``: the Ed25519 signature of the manifest's
bytes, base64. With ``public_key`` configured the signature is required and checked; every
file's SHA-256 is checked always. A verified set is written to ``versions/<version>/``, compiled
(a set that does not compile is refused), and made current by replacing the ``current``
symlink in one rename, so a worker sees either the old set or the new one, never a mix.
Running workers notice the new target within ``check_interval`` seconds and map its compiled
database.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import msgspec

__all__ = [
    "UpdateError",
    "UpdateResult",
    "UpdatesConfig",
    "current_dir",
    "history",
    "update",
]

_VERSION = re.compile(r"^[0-9A-Za-z._-]{1,64}$")
_NAME = re.compile(r"^[0-9A-Za-z._-]{1,128}\.(ndb|hdb|hsb|ldb|yar|yara)$")
_MAX_FILE = 512 * 1024 * 1024
_KEEP_VERSIONS = 2


class UpdatesConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``[antivirus.updates]``: where signature updates come from and how they are checked.

    ``source`` is a directory or an ``https://`` (or ``http://`` with a ``public_key``) URL of
    a mirror; ``public_key`` the mirror's Ed25519 key, base64 (its signature on
    ``manifest.json`` is then required). ``check_interval``: how often a running worker looks
    for a newly installed set.
    """

    source: str = ""
    public_key: str = ""
    timeout: float = 60.0
    check_interval: float = 60.0


class UpdateError(Exception):
    """The update was refused; the current set stays."""


@dataclass
class UpdateResult:
    """What an update did."""

    version: str
    changed: bool
    files: dict[str, str] = field(default_factory=dict)
    signatures: int = 0


def current_dir(root: Path) -> Path | None:
    """The directory of the installed set, if any."""
    link = root / "current"
    return link.resolve() if link.exists() else None


def _fetch(source: str, name: str, timeout: float) -> bytes:
    if source.startswith(("http://", "https://")):
        import httpx

        url = urljoin(source.rstrip("/") + "/", name)
        try:
            response = httpx.get(url, timeout=timeout, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise UpdateError(f"cannot fetch {url}: {exc}") from exc
        if len(response.content) > _MAX_FILE:
            raise UpdateError(f"{url} is larger than {_MAX_FILE} bytes")
        return response.content
    path = Path(source) / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UpdateError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _verify_signature(manifest: bytes, signature: bytes, public_key: str) -> None:
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    try:
        key = VerifyKey(base64.b64decode(public_key))
        key.verify(manifest, base64.b64decode(signature.strip()))
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise UpdateError("manifest.json.sig does not verify with the configured key") from exc


def _manifest(data: bytes) -> tuple[str, dict[str, str]]:
    try:
        document = json.loads(data)
        version, files = str(document["version"]), dict(document["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UpdateError(f"manifest.json is not a signature manifest: {exc}") from exc
    if not _VERSION.match(version):
        raise UpdateError(f"manifest version {version!r} is not a plain name")
    for name, digest in files.items():
        # Names become file names here: nothing with a slash, nothing but signature files.
        if not _NAME.match(name) or not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
            raise UpdateError(f"manifest entry {name!r} is not a signature file with a SHA-256")
    if not files:
        raise UpdateError("manifest.json lists no files")
    return version, {name: str(digest) for name, digest in files.items()}


def _record(root: Path, entry: dict[str, object]) -> None:
    with (root / "updates.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def history(root: Path) -> list[dict[str, object]]:
    """Every update attempt, oldest first (what ``mailwarden sigs info`` shows)."""
    path = root / "updates.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def update(
    config: UpdatesConfig,
    root: Path,
    compile_check: Callable[[Path], int],
    source: str | None = None,
) -> UpdateResult:
    """Fetch, verify, compile and install the set at ``source`` (default: the config's).

    ``compile_check(directory) -> int`` compiles the new set and returns its signature count;
    anything it raises refuses the update. The outcome is appended to ``updates.jsonl``.
    """
    origin = source or config.source
    root.mkdir(parents=True, exist_ok=True)
    try:
        result = _update(config, root, compile_check, origin)
    except UpdateError as exc:
        _record(root, {"time": time.time(), "source": origin, "ok": False, "error": str(exc)})
        raise
    _record(
        root,
        {
            "time": time.time(),
            "source": origin,
            "ok": True,
            "version": result.version,
            "changed": result.changed,
            "signatures": result.signatures,
        },
    )
    return result


def _update(
    config: UpdatesConfig, root: Path, compile_check: Callable[[Path], int], origin: str
) -> UpdateResult:
    if not origin:
        raise UpdateError("no update source: set [antivirus.updates] source or pass --from")
    if origin.startswith("http://") and not config.public_key:
        raise UpdateError("a plain http:// mirror needs public_key: nothing else vouches for it")
    manifest = _fetch(origin, "manifest.json", config.timeout)
    if config.public_key:
        _verify_signature(
            manifest, _fetch(origin, "manifest.json.sig", config.timeout), config.public_key
        )
    version, files = _manifest(manifest)
    installed = current_dir(root)
    if installed is not None and installed.name == version:
        return UpdateResult(version, changed=False, files=files)
    versions = root / "versions"
    staging = versions / f".{version}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name, digest in files.items():
            data = _fetch(origin, name, config.timeout)
            if hashlib.sha256(data).hexdigest() != digest:
                raise UpdateError(f"{name}: SHA-256 differs from the manifest")
            (staging / name).write_bytes(data)
        (staging / "manifest.json").write_bytes(manifest)
        try:
            count = compile_check(staging)
        except UpdateError:
            raise
        except Exception as exc:
            raise UpdateError(f"the new set does not compile: {exc}") from exc
        final = versions / version
        shutil.rmtree(final, ignore_errors=True)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    link = root / f".current.{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(Path("versions") / version)
    # One rename: readers see the old target or the new one, never none.
    os.replace(link, root / "current")
    _prune(versions, keep=version)
    return UpdateResult(version, changed=True, files=files, signatures=count)


def _prune(versions: Path, keep: str) -> None:
    # The new set and the one before it (for a quick manual rollback); older ones go.
    sets = sorted(
        (p for p in versions.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in [p for p in sets if p.name != keep][_KEEP_VERSIONS - 1 :]:
        shutil.rmtree(old, ignore_errors=True)

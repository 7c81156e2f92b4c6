"""DKIM signing of outbound mail (dkimpy), RSA and Ed25519, and key generation.

Keys are files 0600 that are read at start and never printed or logged; only the public half
leaves the machine, as the DNS record ``mailwarden dkim keygen`` prints.
"""

from __future__ import annotations

import base64
import email.parser
import email.utils
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .config import Config
from .errors import ConfigError
from .tls import write_private

__all__ = ["DkimSigner", "keygen", "public_record"]

Algorithm = Literal["rsa", "ed25519"]

# What verifiers and receivers look at (RFC 6376 5.4.1); "from" is listed twice so that a From
# header added after signing breaks the signature (oversigning).
_SIGNED = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-id",
    "list-unsubscribe",
)


@dataclass(frozen=True)
class _Key:
    domain: str
    selector: str
    algorithm: Algorithm
    material: bytes

    def __repr__(self) -> str:  # never let the private key reach a log line or a traceback
        return f"_Key({self.selector}._domainkey.{self.domain}, {self.algorithm})"


def _load_key(path: Path, domain: str, selector: str) -> _Key:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"DKIM key for {domain} unreadable: {exc.strerror}", key="dkim.keys"
        ) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"DKIM key {path} is accessible by others (mode {stat.S_IMODE(mode):04o}); "
            "run chmod 600 on it",
            key="dkim.keys",
        )
    if b"-----BEGIN" in data:
        return _Key(domain.lower(), selector, "rsa", data)
    # Ed25519 keys are the base64 32-byte seed, the form RFC 8463 and dkimpy use.
    try:
        if len(base64.b64decode(data.strip(), validate=True)) == 32:
            return _Key(domain.lower(), selector, "ed25519", data.strip())
    except ValueError:
        pass
    raise ConfigError(f"DKIM key {path} is neither a PEM RSA key nor an Ed25519 seed")


class DkimSigner:
    """Signs messages whose From domain has a configured key; others pass unchanged."""

    def __init__(self, keys: list[_Key]) -> None:
        self._keys = {k.domain: k for k in keys}

    @classmethod
    def from_config(cls, config: Config) -> DkimSigner:
        """Load the ``[dkim] keys``; a missing or too-open key file is a ConfigError."""
        return cls(
            [
                _load_key(config.path_in_home(k.key_file), k.domain, k.selector)
                for k in config.dkim.keys
            ]
        )

    @property
    def domains(self) -> list[str]:
        """Domains with a signing key."""
        return sorted(self._keys)

    def sign(self, data: bytes) -> bytes:
        """``data`` (CRLF line ends) with a DKIM-Signature prepended when a key applies."""
        if not self._keys:
            return data
        end = data.find(b"\r\n\r\n")
        headers = email.parser.BytesHeaderParser().parsebytes(data[: end + 4] if end >= 0 else data)
        domain = email.utils.parseaddr(str(headers.get("From", "")))[1].rpartition("@")[2]
        key = self._keys.get(domain.lower())
        if key is None:
            return data
        present = {name.lower() for name in headers}
        include = [h.encode() for h in _SIGNED if h in present] + [b"from"]
        signature = dkimpy.sign(
            data,
            key.selector.encode(),
            key.domain.encode(),
            key.material,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=b"ed25519-sha256" if key.algorithm == "ed25519" else b"rsa-sha256",
            include_headers=include,
            linesep=b"\r\n",
        )
        return bytes(signature) + data


def public_record(private: bytes) -> str:
    """The ``v=DKIM1`` TXT value for a key file's content."""
    if b"-----BEGIN" in private:
        key = serialization.load_pem_private_key(private, password=None)
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    seed = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(private.strip()))
    raw = seed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


def keygen(
    domain: str, selector: str, path: Path, algorithm: Algorithm = "rsa", bits: int = 2048
) -> str:
    """Write a new private key to ``path`` (0600, never overwriting); return its DNS record."""
    if path.exists():
        raise ConfigError(f"{path} exists; remove it first or choose another selector")
    if algorithm == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        data = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    else:
        seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        data = base64.b64encode(seed) + b"\n"
    write_private(path, data)
    record = public_record(data)
    # TXT strings are at most 255 octets; an RSA-2048 record needs several.
    chunks = " ".join(f'"{record[i : i + 250]}"' for i in range(0, len(record), 250))
    return f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"

"""TLS material for the gateway: the listener's certificate and the client contexts.

When no certificate is configured, a self-signed one is generated on first start so that
STARTTLS works out of the box (opportunistic TLS between MTAs does not verify certificates,
RFC 7435). Private keys are written 0600 and never printed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailwarden_sdk.files import atomic_write

from .config import Config

__all__ = [
    "client_context",
    "ensure_certificate",
    "server_context",
    "tls_paths",
    "write_private",
]


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` created 0600 from the start (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def ensure_certificate(cert: Path, key: Path, hostname: str) -> bool:
    """Generate a self-signed certificate for ``hostname`` unless both files exist.

    Returns True when new files were written. Worker processes starting together serialise on
    a lock file, so none of them can load a key of one pair with the certificate of another.
    """
    key.parent.mkdir(parents=True, exist_ok=True)
    with open(key.parent / ".generate.lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cert.exists() and key.exists():
            return False
        _generate(cert, key, hostname)
    return True


def _generate(cert: Path, key: Path, hostname: str) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    write_private(
        key,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    # Public, but it lives in the home, where every file is the service account's alone (the
    # home-permissions test walks them all); an MTA that wants it gets it through the admin.
    atomic_write(cert, certificate.public_bytes(serialization.Encoding.PEM))


def tls_paths(config: Config) -> tuple[Path, Path]:
    """The certificate and key files the listener uses (configured, or the generated pair)."""
    if config.tls.cert_file and config.tls.key_file:
        return config.path_in_home(config.tls.cert_file), config.path_in_home(config.tls.key_file)
    return config.home / "tls" / "cert.pem", config.home / "tls" / "key.pem"


def server_context(config: Config) -> ssl.SSLContext:
    """The listener's context; generates the self-signed pair when none is configured."""
    cert, key = tls_paths(config)
    if not (config.tls.cert_file and config.tls.key_file):
        ensure_certificate(cert, key, config.gateway.hostname)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def client_context(verify: bool, ca_file: str = "") -> ssl.SSLContext:
    """The context for STARTTLS to the next hop; ``verify`` checks name and chain."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context

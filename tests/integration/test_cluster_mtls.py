"""Mutual TLS between cluster nodes (``[cluster] tls_cert/tls_key/tls_ca``) instead of a secret.

A real gateway serves its web interface over HTTPS on 127.0.0.1 (uvicorn, in this process) as
node ``b``; certificates (the cluster's CA, the nodes', a stranger's) are made here with
``cryptography``. The other side is node ``a``'s console client, and raw httpx clients that
present another certificate or none.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailwarden.cluster.console import Console
from mailwarden.config import parse_config
from mailwarden.errors import ConfigError
from mailwarden.serve import start_web
from mailwarden.testing import GatewayRunner, _gateway
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    signer: ec.EllipticCurvePrivateKey,
    extensions: list[x509.ExtensionType],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension in extensions:
        critical = isinstance(extension, x509.BasicConstraints | x509.KeyUsage)
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


@dataclass
class Authority:
    """A CA that signs node certificates into a directory."""

    directory: Path
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, directory: Path, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        cert = _certificate(
            name,
            key,
            None,
            key,
            [
                x509.BasicConstraints(ca=True, path_length=0),
                usage,
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            ],
        )
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, name, key, cert)

    @property
    def pem(self) -> Path:
        return self.directory / f"{self.name}.pem"

    def issue(self, common_name: str) -> tuple[Path, Path]:
        """A certificate for ``common_name`` (server and client use, for 127.0.0.1)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName(common_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = _certificate(
            common_name,
            key,
            self.cert.subject,
            self.key,
            [
                x509.SubjectAlternativeName(names),
                x509.ExtendedKeyUsage(usages),
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
            ],
        )
        cert_path = self.directory / f"{self.name}-{common_name}.crt"
        key_path = self.directory / f"{self.name}-{common_name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pkcs8 = serialization.PrivateFormat.PKCS8
        pem = key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
        key_path.write_bytes(pem)
        key_path.chmod(0o600)
        return cert_path, key_path


def node_config(ca: Authority, name: str, ports: dict[str, int]) -> str:
    cert, key = ca.issue(name)
    nodes = ", ".join(f'{{name = "{n}", url = "https://127.0.0.1:{p}"}}' for n, p in ports.items())
    return f"""
[tls]
cert_file = "{cert}"
key_file = "{key}"
[web]
listen = "127.0.0.1"
port = {ports[name]}
[cluster]
name = "{name}"
nodes = [{nodes}]
tls_cert = "{cert}"
tls_key = "{key}"
tls_ca = "{ca.pem}"
timeout = 5.0
"""


@dataclass
class Cluster:
    ca: Authority
    ports: dict[str, int]
    b: GatewayRunner

    def url(self, target: str) -> str:
        return f"https://127.0.0.1:{self.ports['b']}{target}"

    def client(self, cert: tuple[Path, Path] | None) -> httpx.Client:
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca.pem))
        if cert is not None:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        return httpx.Client(verify=context, timeout=10)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    ca = Authority.make(tmp_path / "pki", "cluster-ca")
    ports = {"a": free_port(), "b": free_port()}
    runner = GatewayRunner(_gateway(None, False, node_config(ca, "b", ports), tmp_path / "b"))
    runner.start()
    server, task = runner._call(start_web(runner.gateway, lambda line: None))
    try:
        yield Cluster(ca, ports, runner)
    finally:

        async def stop() -> None:
            server.should_exit = True
            await asyncio.wait_for(task, 10)

        runner._call(stop())
        runner.stop()


def test_the_console_of_a_asks_b_over_mutual_tls_without_a_secret(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = parse_config(node_config(cluster.ca, "a", cluster.ports))
    config.gateway.home = str(tmp_path / "a")
    console = Console(config)
    assert console.signer is None and console.mtls

    async def ask() -> Any:
        async def here() -> list[dict[str, Any]]:
            return []

        try:
            return await console.fan_out("/cluster/v1/quarantine", here)
        finally:
            await console.client().aclose()

    answers = asyncio.run(ask())
    b = next(answer for answer in answers if answer.name == "b")
    assert b.answered, b.error
    assert b.items == []


def test_the_node_api_refuses_a_client_without_a_certificate_of_the_cluster_ca(
    cluster: Cluster, tmp_path: Path
) -> None:
    target = "/cluster/v1/quarantine"
    with cluster.client(cluster.ca.issue("a")) as client:
        assert (
            client.get(cluster.url(target), headers={"x-mailwarden-node": "a"}).status_code == 200
        )
        # A node's certificate cannot speak for another node.
        other = client.get(cluster.url(target), headers={"x-mailwarden-node": "b"})
        assert other.status_code == 401 and "not the node" in other.json()["error"]
    # No certificate: the pages still answer (browsers have none), the node API does not.
    with cluster.client(None) as client:
        refused = client.get(cluster.url(target))
        assert refused.status_code == 401, refused.text
        assert "client certificate" in refused.json()["error"]
        assert client.get(cluster.url("/login")).status_code == 200
    # Signed by the cluster's CA, but for no node of [cluster] nodes.
    with cluster.client(cluster.ca.issue("mallory")) as client:
        refused = client.get(cluster.url(target))
        assert refused.status_code == 401 and "'mallory'" in refused.json()["error"]
    # A certificate for "a" from another CA: the TLS handshake fails, nothing is answered.
    stranger = Authority.make(tmp_path / "stranger", "stranger-ca")
    with cluster.client(stranger.issue("a")) as client, pytest.raises(httpx.TransportError):
        client.get(cluster.url(target))


@pytest.mark.parametrize(
    ("cluster_section", "message"),
    [
        ('tls_cert = "n.crt"\ntls_key = "n.key"\n', "tls_cert, tls_key and tls_ca together"),
        ("", "shared secret (secret or secret_file) or mutual TLS"),
    ],
)
def test_a_cluster_without_a_secret_needs_all_three_tls_files(
    cluster_section: str, message: str
) -> None:
    text = '[cluster]\nnodes = [{name = "a", url = "https://a.test"}]\n' + cluster_section
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)

"""Mutual TLS between the nodes of ``[cluster]``: the alternative to the shared secret.

With ``[cluster] tls_cert``, ``tls_key`` and ``tls_ca`` every node presents its own certificate
(signed by the cluster's CA, its subject's common name the node's name in ``[cluster] nodes``)
when its console asks another node, and the web listener asks every client for one
(``CERT_OPTIONAL``, so browsers without a certificate still reach the pages): a certificate the
CA did not sign fails the TLS handshake, and a request to the node API (``/cluster/v1/...``)
without a verified certificate naming a node is refused with 401.

uvicorn does not put the client's certificate into the ASGI scope, so :func:`peer_protocol`
gives it an HTTP protocol class that does, per connection, as ASGI's TLS extension says
(``scope["extensions"]["tls"]["client_cert_name"]``).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["client_context", "enabled", "node_of", "peer_protocol", "server_options"]


def enabled(config: Config) -> bool:
    """Whether the nodes authenticate each other with certificates."""
    cluster = config.cluster
    return bool(cluster.nodes and cluster.tls_ca)


def client_context(config: Config) -> ssl.SSLContext:
    """The console's TLS: this node's certificate for the others, and the CA that signed
    theirs (``ca_file`` when set, else ``tls_ca``) to verify them."""
    cluster = config.cluster
    ca = config.path_in_home(cluster.ca_file or cluster.tls_ca)
    cert, key = config.path_in_home(cluster.tls_cert), config.path_in_home(cluster.tls_key)
    try:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the cluster's TLS files ({cert}, {key}, {ca}): {exc}",
            path=config.source,
            key="cluster.tls_cert",
        ) from exc
    return context


def server_options(config: Config) -> dict[str, Any]:
    """uvicorn's options for a web listener that asks clients for a certificate of the CA."""
    if not enabled(config):
        return {}
    ca = config.path_in_home(config.cluster.tls_ca)
    if not ca.is_file():
        raise ConfigError(
            f"cannot read the cluster's CA {ca}", path=config.source, key="cluster.tls_ca"
        )
    return {
        "ssl_ca_certs": str(ca),
        "ssl_cert_reqs": ssl.CERT_OPTIONAL,
        "http": peer_protocol(),
    }


def _common_name(peer: Mapping[str, Any] | None) -> str | None:
    for rdn in (peer or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def peer_protocol() -> type[Any]:
    """uvicorn's HTTP/1.1 protocol, with the verified client certificate's name in the scope."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    base: Any = AutoHTTPProtocol

    class PeerCertProtocol(base):  # type: ignore[misc]
        app: Any

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            # getpeercert() holds a certificate only when the handshake verified it.
            name = _common_name(ssl_object.getpeercert()) if ssl_object is not None else None
            app = self.app

            async def with_peer(scope: Any, receive: Any, send: Any) -> Any:
                tls = scope.setdefault("extensions", {}).setdefault("tls", {})
                tls["client_cert_name"] = name
                return await app(scope, receive, send)

            self.app = with_peer

    return PeerCertProtocol


def node_of(scope: Mapping[str, Any]) -> str | None:
    """The common name of the client's verified certificate, ``None`` without one."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    name = tls.get("client_cert_name")
    return name if isinstance(name, str) else None

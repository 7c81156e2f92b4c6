"""``mailwarden reputation serve``: a private reputation service (the KPSN role).

An organisation loads its own feeds (CSV or JSON) into LMDB and points its gateways' ``http_url``
at this service, so no lookup leaves its network. The wire format is :class:`LookupRequest` /
:class:`LookupResponse` (``POST /v1/lookup``), statistics arrive as :class:`StatisticsReport`
(``POST /v1/statistics``), ``GET /health`` answers probes and ``GET /v1/server-stats`` reports
the requests served, by path, since start.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import hmac
import ipaddress
import json
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import lmdb
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .backends import LookupRequest, LookupResponse, LookupResult, StatisticsReport
from .cache import Answer
from .lookups import KINDS, normalise_url

__all__ = ["FeedError", "ServiceStore", "create_app", "ensure_certificate", "read_feed"]

_COUNT = struct.Struct(">Q")
_VERDICTS = ("malicious", "suspicious", "clean")


class FeedError(ValueError):
    """A feed file that cannot be loaded, with the file and line (or item) at fault."""


class ServiceStore:
    """The service's data: ``kind:value -> Answer`` and the statistics received, in LMDB."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(path / "db"), map_size=8 << 30, max_dbs=2)
        self._entries = self._env.open_db(b"entries")
        self._stats = self._env.open_db(b"statistics")

    def close(self) -> None:
        """Close the environment."""
        self._env.close()

    def load(self, rows: Iterable[tuple[str, str, str, str]]) -> int:
        """Store ``(kind, value, verdict, name)`` rows (replacing older ones); returns the count."""
        count = 0
        with self._env.begin(write=True) as txn:
            for kind, value, verdict, name in rows:
                answer = Answer(verdict=verdict, name=name, source="service")
                txn.put(f"{kind}:{value}".encode(), msgspec.json.encode(answer), db=self._entries)
                count += 1
        return count

    def lookup(self, items: LookupRequest) -> LookupResponse:
        """Answer each item; unknown values are ``clean``."""
        results = []
        with self._env.begin() as txn:
            for item in items.items:
                raw = txn.get(f"{item.kind}:{item.value}".encode(), db=self._entries)
                if raw is None:
                    results.append(LookupResult(kind=item.kind, value=item.value, verdict="clean"))
                    continue
                answer = msgspec.json.decode(raw, type=Answer)
                results.append(
                    LookupResult(
                        kind=item.kind, value=item.value, verdict=answer.verdict, name=answer.name
                    )
                )
        return LookupResponse(results)

    def add_statistics(self, report: StatisticsReport) -> None:
        """Add a node's counts to the totals received."""
        with self._env.begin(write=True) as txn:
            for key, n in report.counts.items():
                bkey = key.encode()
                old = txn.get(bkey, db=self._stats)
                txn.put(
                    bkey, _COUNT.pack(n + (_COUNT.unpack(old)[0] if old else 0)), db=self._stats
                )

    def statistics(self) -> dict[str, int]:
        """Totals received, by ``kind:verdict``."""
        with self._env.begin() as txn:
            return {
                bytes(k).decode(): int(_COUNT.unpack(v)[0]) for k, v in txn.cursor(db=self._stats)
            }

    def __len__(self) -> int:
        with self._env.begin() as txn:
            return int(txn.stat(self._entries)["entries"])


def _normalise(kind: str, value: str, where: str) -> str:
    value = value.strip()
    if kind in ("sha256", "md5"):
        value = value.lower()
        size = 64 if kind == "sha256" else 32
        if len(value) != size or any(c not in "0123456789abcdef" for c in value):
            raise FeedError(f"{where}: {kind} must be {size} hex digits")
        return value
    if kind == "url":
        normal = normalise_url(value)
        if normal is None:
            raise FeedError(f"{where}: not an http(s) URL")
        return normal[0]
    if kind == "domain":
        try:
            return value.rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError as exc:
            raise FeedError(f"{where}: bad domain name") from exc
    if kind == "ip":
        try:
            return ipaddress.ip_address(value).compressed
        except ValueError as exc:
            raise FeedError(f"{where}: bad IP address") from exc
    raise FeedError(f"{where}: kind must be one of {', '.join(KINDS)}")


def _row(record: dict[str, str], where: str) -> tuple[str, str, str, str]:
    kind = (record.get("kind") or "").strip().lower()
    verdict = (record.get("verdict") or "malicious").strip().lower()
    if verdict not in _VERDICTS:
        raise FeedError(f"{where}: verdict must be one of {', '.join(_VERDICTS)}")
    value = _normalise(kind, record.get("value") or "", where)
    return kind, value, verdict, (record.get("name") or "").strip()[:100]


def read_feed(path: Path) -> Iterator[tuple[str, str, str, str]]:
    """Rows of a feed: CSV with a ``kind,value,verdict,name`` header, or a JSON list of objects.

    ``verdict`` defaults to ``malicious``; values are normalised the way the gateway sends them
    (lowercase hex, normalised URLs, IDNA domains, compressed IPs).
    """
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FeedError(f"{path}: {exc}") from exc
        if not isinstance(records, list):
            raise FeedError(f"{path}: expected a JSON list of objects")
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise FeedError(f"{path}[{index}]: expected an object")
            yield _row({k: str(v) for k, v in record.items()}, f"{path}[{index}]")
        return
    with path.open(encoding="utf-8", newline="") as handle:
        # Line 1 is the header; a record's line is its position after it.
        for line, record in enumerate(csv.DictReader(handle), start=2):
            yield _row(record, f"{path}:{line}")


def create_app(store: ServiceStore, token: str = "") -> Starlette:
    """The service as an ASGI app over ``store``.

    With ``token`` set, every ``/v1/`` request must carry ``Authorization: Bearer <token>``
    (``/health`` stays open for probes).
    """
    served: collections.Counter[str] = collections.Counter()
    expected = f"Bearer {token}".encode()

    def refused(request: Request) -> Response | None:
        if not token:
            return None
        given = request.headers.get("authorization", "").encode()
        if hmac.compare_digest(given, expected):
            return None
        return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)

    decode_request = msgspec.json.Decoder(LookupRequest).decode
    decode_report = msgspec.json.Decoder(StatisticsReport).decode

    async def lookup(request: Request) -> Response:
        served[request.url.path] += 1
        if (denied := refused(request)) is not None:
            return denied
        try:
            items = decode_request(await request.body())
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return Response(msgspec.json.encode(store.lookup(items)), media_type="application/json")

    async def statistics(request: Request) -> Response:
        served[request.url.path] += 1
        if (denied := refused(request)) is not None:
            return denied
        try:
            report = decode_report(await request.body())
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        store.add_statistics(report)
        return JSONResponse({"accepted": sum(report.counts.values())})

    async def health(request: Request) -> Response:
        served[request.url.path] += 1
        return JSONResponse({"status": "ok", "entries": len(store)})

    async def server_stats(request: Request) -> Response:
        # Not counted itself, so tests and monitoring can read it without changing it.
        if (denied := refused(request)) is not None:
            return denied
        return JSONResponse(
            {
                "requests": sum(served.values()),
                "by_path": dict(served),
                "statistics_received": store.statistics(),
            }
        )

    return Starlette(
        routes=[
            Route("/v1/lookup", lookup, methods=["POST"]),
            Route("/v1/statistics", statistics, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/v1/server-stats", server_stats, methods=["GET"]),
        ]
    )


def ensure_certificate(directory: Path, hosts: Iterable[str]) -> tuple[Path, Path]:
    """A self-signed certificate and key for ``hosts`` in ``directory``, made on first use.

    Gateways trust it through ``[reputation] http_ca_file``; the key file is mode 0600.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailwarden reputation")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path

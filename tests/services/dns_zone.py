"""A small authoritative DNS server on 127.0.0.1 answering from test data (UDP and TCP).

The SPF, DKIM, ARC and DMARC suites ship the DNS they expect as data; this server answers
exactly that, so the plugin's real resolver (dnspython, timeouts, cache) is what the suites
exercise. ``TIMEOUT`` entries are never answered, the way the openspf suite means them.
``ZoneServer.silent`` makes the whole server a dead resolver: queries are read, counted in
``queries`` and dropped, over UDP and TCP alike.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["TIMEOUT", "Zone", "ZoneServer", "running_zone", "txt_rdata"]

TIMEOUT = "TIMEOUT"
#: name -> ordered entries: (type, rdata text) pairs or the TIMEOUT marker.
Zone = Mapping[str, Sequence[tuple[str, str] | str]]


def txt_rdata(*strings: str | bytes) -> str:
    """Presentation form of a TXT record, long strings cut into 255-octet pieces."""
    pieces: list[bytes] = []
    for s in strings:
        data = s.encode("utf-8") if isinstance(s, str) else s
        pieces.extend(data[i : i + 255] for i in range(0, len(data), 255))
        if not data:
            pieces.append(b"")
    out = []
    for piece in pieces:
        text = "".join(
            chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:03d}" for b in piece
        )
        out.append(f'"{text}"')
    return " ".join(out)


class _Answers:
    def __init__(self, zone: Zone) -> None:
        self.zone = {k.lower().rstrip("."): list(v) for k, v in zone.items()}
        self.queries: list[tuple[str, str]] = []
        self.silent = False

    def lookup(
        self, name: str, qtype: str, depth: int = 0, seen: frozenset[str] = frozenset()
    ) -> tuple[str, list[dns.rrset.RRset]]:
        entries = self.zone.get(name)
        if entries is None:
            return ("timeout" if name.startswith("error.") else "nxdomain"), []
        matched: list[str] = []
        for entry in entries:
            if entry == TIMEOUT:
                if not matched:
                    return "timeout", []
                break
            rtype, value = entry
            if rtype == qtype and value == TIMEOUT:
                return "timeout", []
            if rtype == "CNAME" and qtype != "CNAME":
                target = value.rstrip(".").lower()
                cname = dns.rrset.from_text(name + ".", 300, "IN", "CNAME", target + ".")
                if target in seen or depth >= 8:
                    return "ok", [cname]  # a loop: the chain as far as it goes, as BIND does
                status, chained = self.lookup(target, qtype, depth + 1, seen | {name})
                return ("ok" if status == "nxdomain" else status), [cname, *chained]
            if rtype == qtype:
                matched.append(value)
        if not matched:
            return "ok", []
        rrset = dns.rrset.RRset(dns.name.from_text(name), dns.rdataclass.IN, _rdtype(qtype))
        for value in matched:
            try:
                rrset.add(dns.rdata.from_text("IN", qtype, value), 300)
            except Exception:  # data a real zone could not hold either: leave it out
                continue
        return "ok", [rrset] if rrset else []

    def respond(self, wire: bytes, max_size: int) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        # Raw labels, not presentation form: suite names hold spaces and other bytes that
        # to_text() would escape.
        name = b".".join(question.name.labels[:-1]).decode("latin-1").lower()
        qtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, qtype))
        if self.silent:
            return None
        status, rrsets = self.lookup(name, qtype)
        if status == "timeout":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if status == "nxdomain":
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.answer.extend(rrsets)
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()


def _rdtype(text: str) -> dns.rdatatype.RdataType:
    return dns.rdatatype.from_text(text)


class ZoneServer:
    """The server; ``port`` is where it listens on 127.0.0.1 (same port for UDP and TCP)."""

    def __init__(self, zone: Zone) -> None:
        self.answers = _Answers(zone)
        answers = self.answers

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = answers.respond(data, 512)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                head = conn.recv(2)
                if len(head) < 2:
                    return
                size = int.from_bytes(head, "big")
                data = b""
                while len(data) < size:
                    chunk = conn.recv(size - len(data))
                    if not chunk:
                        return
                    data += chunk
                reply = answers.respond(data, 65535)
                if reply is not None:
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tcp)
        self.port = int(self._tcp.server_address[1])
        self._udp = socketserver.ThreadingUDPServer(("127.0.0.1", self.port), Udp)
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            for s in (self._udp, self._tcp)
        ]

    @property
    def queries(self) -> list[tuple[str, str]]:
        return self.answers.queries

    @property
    def silent(self) -> bool:
        """True: answer nothing at all, like a dead or firewalled resolver."""
        return self.answers.silent

    @silent.setter
    def silent(self, value: bool) -> None:
        self.answers.silent = value

    def start(self) -> ZoneServer:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        for s in (self._udp, self._tcp):
            s.shutdown()
            s.server_close()


@contextmanager
def running_zone(zone: Zone) -> Iterator[ZoneServer]:
    """A started :class:`ZoneServer`, stopped on exit."""
    server = ZoneServer(zone).start()
    try:
        yield server
    finally:
        server.stop()


def simple_zone(records: Mapping[str, Any]) -> dict[str, list[tuple[str, str] | str]]:
    """``{name: TXT text}`` as the DKIM and DMARC vectors give DNS: ``None`` is NXDOMAIN (left
    out), ``""`` a name without TXT records."""
    zone: dict[str, list[tuple[str, str] | str]] = {}
    for name, value in records.items():
        if value is None:
            continue
        key = name.lower().rstrip(".")
        entries = zone.setdefault(key, [])
        if isinstance(value, str) and value:
            entries.append(("TXT", txt_rdata(value.strip())))
    return zone

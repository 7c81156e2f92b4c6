"""Malformed requests to the clamd, spamd and rspamd-HTTP listeners get the protocol's own
error reply and a closed connection, never a hang or a crash (hypothesis)."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.integration.protocols_serve import Served, serve_protocols
from tests.integration.protocols_serve import exchange as _exchange


def exchange(port: int, data: bytes) -> bytes:
    return _exchange(port, data, timeout=_WAIT)


pytestmark = pytest.mark.integration

# Each example: send, half-close, read to EOF. A listener that hangs fails at this bound.
_WAIT = 30.0
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_protocols(tmp_path_factory.mktemp("fuzz")) as server:
        yield server


def alive(served: Served) -> None:
    # After every malformed request the listeners still answer a good one.
    assert exchange(served.clamd, b"zPING\0") == b"PONG\0"
    assert exchange(served.spamd, b"PING SPAMC/1.5\r\n\r\n") == b"SPAMD/1.5 0 PONG\r\n"
    assert exchange(served.http, b"GET /ping HTTP/1.0\r\n\r\n").endswith(b"pong\r\n")


# --- clamd ---------------------------------------------------------------------------------

_CLAMD_COMMANDS = {"PING", "VERSION", "VERSIONCOMMANDS", "INSTREAM", "IDSESSION", "END"}
_CLAMD_REPLY = re.compile(
    rb"((\d+: )?(PONG|mailwarden [^\0\n]*|stream: [^\0\n]* (OK|FOUND|ERROR)|stream: OK"
    rb"|UNKNOWN COMMAND|[^\0\n]* ERROR)[\0\n])*"
)


def _names_a_command(word: bytes) -> bool:
    # Sent without a prefix, "zVERSION" is the z-prefixed VERSION itself (hypothesis found it):
    # a real command, answered, not an unknown one.
    text = word.strip(b"\0\n\r ").decode("latin-1").strip()
    return text in _CLAMD_COMMANDS or (text[:1] in ("z", "n") and text[1:] in _CLAMD_COMMANDS)


@FUZZ
@given(
    prefix=st.sampled_from([b"z", b"n", b""]),
    word=st.binary(max_size=40).filter(lambda w: not _names_a_command(w)),
)
def test_clamd_unknown_commands(served: Served, prefix: bytes, word: bytes) -> None:
    end = b"\0" if prefix == b"z" else b"\n"
    reply = exchange(served.clamd, prefix + word + end)
    # Without a prefix, a word starting with z or n is itself the prefixed form.
    assert reply in (b"UNKNOWN COMMAND" + end, b"UNKNOWN COMMAND\n", b"UNKNOWN COMMAND\0", b""), (
        reply
    )
    if word and not (prefix == b"" and word[:1] in (b"z", b"n")):
        assert reply, word


@FUZZ
@given(
    prefix=st.sampled_from([b"z", b"n"]),
    frames=st.lists(
        st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=64)), min_size=0, max_size=6
    ),
    tail=st.binary(max_size=8),
)
def test_clamd_bad_instream_framing(
    served: Served, prefix: bytes, frames: list[tuple[int, bytes]], tail: bytes
) -> None:
    end = b"\0" if prefix == b"z" else b"\n"
    body = b"".join(struct.pack(">I", n) + data for n, data in frames) + tail
    reply = exchange(served.clamd, prefix + b"INSTREAM" + end + body)
    assert reply.endswith(end), reply
    assert reply.startswith(b"stream: ") or reply.endswith(b" ERROR" + end), reply
    assert _CLAMD_REPLY.fullmatch(reply), reply


@FUZZ
@given(data=st.binary(max_size=300))
def test_clamd_arbitrary_bytes(served: Served, data: bytes) -> None:
    reply = exchange(served.clamd, data)
    assert _CLAMD_REPLY.fullmatch(reply), reply


# --- spamd ---------------------------------------------------------------------------------

_SPAMD_METHODS = ("CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "PROCESS", "HEADERS", "PING")


@FUZZ
@given(data=st.binary(max_size=300))
def test_spamd_garbage_is_ex_protocol(served: Served, data: bytes) -> None:
    first = data.split(b"\n", 1)[0]
    method, _, version = first.partition(b" ")
    valid = method.decode("latin-1") in (*_SPAMD_METHODS, "TELL", "SKIP") and version.startswith(
        b"SPAMC/"
    )
    reply = exchange(served.spamd, data)
    if not data:
        assert reply == b""  # a client that says nothing is just disconnected
    elif not valid:
        assert reply == b"SPAMD/1.5 76 EX_PROTOCOL\r\n\r\n", (data, reply)
    else:
        assert reply == b"" or reply.startswith(b"SPAMD/1.5 "), reply


@FUZZ
@example(
    method="CHECK", headers=[b"Content-length: \xc2\xb2"], length=None, body=b"", compress=False
)
@given(
    method=st.sampled_from(_SPAMD_METHODS[:-1]),
    headers=st.lists(st.binary(max_size=40).filter(lambda h: b"\n" not in h), max_size=5),
    length=st.one_of(st.none(), st.integers(0, 200), st.text(max_size=6)),
    body=st.binary(max_size=200),
    compress=st.booleans(),
)
def test_spamd_bad_headers_and_bodies(
    served: Served,
    method: str,
    headers: list[bytes],
    length: int | str | None,
    body: bytes,
    compress: bool,
) -> None:
    lines = [f"{method} SPAMC/1.5".encode(), *headers]
    if length is not None:
        lines.append(f"Content-length: {length}".encode("utf-8", "replace"))
    if compress:
        lines.append(b"Compress: zlib")
    reply = exchange(served.spamd, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    assert re.match(
        rb"SPAMD/1\.5 (0 EX_OK|76 EX_PROTOCOL|74 EX_IOERR|75 EX_TEMPFAIL)\r\n", reply
    ), reply


# --- rspamd HTTP ---------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=300))
def test_http_garbage_is_400(served: Served, data: bytes) -> None:
    reply = exchange(served.http, data)
    first = data.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
    if not data:
        assert reply == b""
    elif len(first) != 3 or first[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (data, reply)
    else:
        assert re.match(rb"HTTP/1\.1 (200|400|404|405|411|413) ", reply), reply


@FUZZ
@example(path="/checkv2", headers=[b"Content-Length: \xb2"], length=None, body=b"")
@given(
    path=st.sampled_from(["/checkv2", "/check", "/symbols", "/ping", "/nope"]),
    headers=st.lists(st.binary(max_size=40).filter(lambda h: b"\n" not in h), max_size=5),
    length=st.one_of(st.none(), st.integers(0, 200), st.text(max_size=6)),
    body=st.binary(max_size=200),
)
def test_http_bad_headers_and_bodies(
    served: Served, path: str, headers: list[bytes], length: int | str | None, body: bytes
) -> None:
    lines = [f"POST {path} HTTP/1.1".encode(), *headers]
    if length is not None:
        lines.append(f"Content-Length: {length}".encode("utf-8", "replace"))
    lines.append(b"Connection: close")
    reply = exchange(served.http, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    status = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
    assert status is not None, reply
    assert status[1] in (b"200", b"400", b"404", b"411", b"413"), reply


def test_listeners_survive_the_fuzzing(served: Served) -> None:
    alive(served)

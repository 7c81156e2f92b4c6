"""Request bodies and the login throttle stay bounded whatever a client sends (issue 25).

The body caps are shown against a real ``mailwarden serve`` (uvicorn, the process that also
serves SMTP): a 1 GiB POST to ``/api/login`` is answered 413 before it is read, and the server's
peak memory does not grow by what was sent.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.web.auth import Throttle
from mailwarden.web.permissions import JSON_BODY, RULES_BODY, SMALL_BODY
from tests.conftest import make_message
from tests.integration.test_release_once_serve import Serve
from tests.web.conftest import Web

GIB = 1 << 30
# What the client may have pushed into the two sockets' buffers before the server's answer
# arrives; far below what a server that reads the body would take in first.
SENT_BEFORE_ANSWER = 32 << 20


def _peak_rss(served: Serve) -> int:
    """The server's peak resident memory so far (bytes); one worker serves in the process."""
    status = Path(f"/proc/{served.process.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Serve]:
    server = Serve(tmp_path, workers=1)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def _post_huge(port: int, *, chunked: bool) -> tuple[int, int, bytes]:
    """POST a 1 GiB JSON body to /api/login, sending until the server answers (or 64 MiB
    went out): the status, how many body bytes the client got out first, the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {GIB}"
    sock.sendall(
        f"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n".encode()
    )
    piece = b'{"name": "' + b"a" * 65526
    if chunked:
        piece = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sock.setblocking(False)
    poller = selectors.DefaultSelector()
    poller.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    sent, pending = 0, piece
    deadline = time.monotonic() + 60
    while sent < 64 << 20 and time.monotonic() < deadline:
        # selectors, not select.select: the suite's process may hold descriptors past 1024.
        masks = [mask for _key, mask in poller.select(1.0)]
        readable = any(m & selectors.EVENT_READ for m in masks)
        writable = any(m & selectors.EVENT_WRITE for m in masks)
        if readable:
            break
        if writable:
            try:
                count = sock.send(pending)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += count
            pending = pending[count:] or piece
    poller.close()
    sock.setblocking(True)
    sock.settimeout(10)
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except (TimeoutError, ConnectionResetError):
        pass
    finally:
        sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, sent, answer


def test_a_huge_login_body_is_refused_before_it_is_read(served: Serve) -> None:
    import httpx

    base = f"http://127.0.0.1:{served.web_port}"
    assert httpx.post(f"{base}/api/login", json={"name": "x", "password": "y"}).status_code == 401
    before = _peak_rss(served)
    # Declared up front: refused on the headers alone.
    status, sent, answer = _post_huge(served.web_port, chunked=False)
    assert status == 413, answer
    assert sent < SENT_BEFORE_ANSWER, sent
    assert b"connection: close" in answer.lower()
    # Streamed without a length: refused once the cap is passed, while it streams.
    status, sent, answer = _post_huge(served.web_port, chunked=True)
    assert status == 413, answer
    assert sent < SENT_BEFORE_ANSWER, sent
    assert _peak_rss(served) - before < 16 << 20
    # The same process still serves pages and mail.
    assert httpx.get(f"{base}/api/health").json() == {"status": "ok"}
    served.send(make_message())


def test_each_route_class_has_its_own_cap(web: Web) -> None:
    client = web.client()
    big_name = "n" * SMALL_BODY
    answer = client.post("/api/login", json={"name": big_name, "password": "x"})
    assert answer.status_code == 413 and str(SMALL_BODY) in answer.json()["error"]
    held = web.hold()
    admin, csrf = web.login("administrator")
    headers = {"x-csrf-token": csrf}
    # A section of settings may be longer than a login, not unbounded.
    padding = {"retention_days": 2.0, "padding": "x" * (JSON_BODY + 1)}
    assert admin.put("/api/settings/events", json=padding, headers=headers).status_code == 413
    # Rules are the long upload: 800 rules (more than a settings section may be) go through.
    rules = [
        {"name": f"rule {i}", "recipients": [f"user{i}-{j}@example.org" for j in range(16)]}
        for i in range(800)
    ] + [{"name": "default"}]
    assert JSON_BODY < len(json.dumps({"rules": rules})) < RULES_BODY
    answer = admin.put("/api/rules", json={"rules": rules}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["rules"]) == 801
    too_many = {"rules": rules, "padding": "x" * RULES_BODY}
    assert admin.put("/api/rules", json=too_many, headers=headers).status_code == 413
    # A form post past its cap is refused before its CSRF token is even looked for.
    answer = admin.post(f"/quarantine/{held}/release", data={"csrf": csrf, "x": "y" * SMALL_BODY})
    assert answer.status_code == 413 and web.gateway.quarantine.held()


def test_failed_logins_with_long_names_keep_the_throttle_small() -> None:
    throttle = Throttle(5)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for i in range(2000):
            name = f"{i:05d}" + "x" * 100_000
            throttle.failed(f"user:{name}", "client:203.0.113.9")
            throttle.retry_after(f"user:{name}", "client:203.0.113.9")
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 2,000 names of 100 KB are 200 MB; what is kept is their digests.
    assert grown - base < 4 << 20, grown - base
    # Kept as digests, long keys still count.
    for _ in range(5):
        throttle.failed("user:" + "y" * 100_000)
    assert throttle.retry_after("user:" + "y" * 100_000) > 0
    assert throttle.retry_after("user:" + "y" * 99_999) == 0


def test_the_throttle_keeps_a_bounded_number_of_keys_and_forgets_old_ones() -> None:
    throttle = Throttle(3, window=0.5, max_keys=100)
    for i in range(1000):
        throttle.failed(f"client:10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
    # The most recent stay counted.
    for _ in range(2):
        throttle.failed("client:10.0.3.231")
    assert throttle.retry_after("client:10.0.3.231") > 0
    time.sleep(0.6)
    throttle.failed("client:192.0.2.1")
    assert len(throttle) == 1
    assert throttle.retry_after("client:10.0.3.231") == 0

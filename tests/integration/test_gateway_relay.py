"""The SMTP gateway in relay mode against real next hops: Postfix's smtp-sink and aiosmtpd.

Covers the durable spool (SIGKILL under load, then restart: every 250 arrives exactly once),
retries with backoff while the next hop is down, DSNs for 5xx, STARTTLS to the next hop and
DKIM signatures checked by dkimpy and by OpenDKIM.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from mailwarden.tls import client_context, ensure_certificate
from tests.conftest import EICAR, free_port, make_message, need
from tests.services import ensure_packages

pytestmark = pytest.mark.integration


def wait_until(check: Callable[[], bool], limit: float, what: str) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {limit:g} s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host`` (127.0.0.1):``port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Sink:
    """Postfix's smtp-sink on 127.0.0.1, one file per received message (services.md 1)."""

    def __init__(self, log_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        ensure_packages("postfix")
        self.host = host
        # smtp-sink drops to "nobody" and writes the files as that user, and pytest's tmp_path
        # sits below a 0700 directory, so the captures live in a directory of their own.
        self.directory = Path(tempfile.mkdtemp(prefix="mailwarden-sink-"))
        self.directory.chmod(0o777)
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Sink:
        self.process = subprocess.Popen(
            [
                "smtp-sink",
                "-u",
                "nobody",
                "-c",
                "-d",
                f"{self.directory}/%H%M%S.",
                f"{self.host}:{self.port}",
                "256",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.log_dir / "sink.log").open("ab"),
        )
        wait_until(lambda: port_open(self.port, self.host), 10, "smtp-sink to listen")
        return self

    def stop(self, remove: bool = False) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)

    def messages(self) -> list[bytes]:
        """The captured messages (smtp-sink's own trace headers included)."""
        # smtp-sink creates a transaction's file at MAIL and writes it whole after the final
        # dot (about 40 ms later here): an empty file is a message still on its way.
        found = (p.read_bytes() for p in sorted(self.directory.iterdir()) if p.is_file())
        return [data for data in found if data]

    def message_ids(self) -> Counter[str]:
        """How often each Message-ID arrived."""
        found: Counter[str] = Counter()
        for data in self.messages():
            parsed = email.message_from_bytes(data, policy=email.policy.compat32)
            found[str(parsed["Message-ID"]).strip()] += 1
        return found


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    """A running smtp-sink."""
    s = Sink(tmp_path / "sink", free_port()).start()
    try:
        yield s
    finally:
        s.stop(remove=True)


class Serve:
    """``mailwarden serve`` as a subprocess with its own home and config."""

    def __init__(self, home: Path, port: int, config: str) -> None:
        self.home = home
        self.port = port
        home.mkdir(parents=True, exist_ok=True)
        (home / "mailwarden.toml").write_text(f"[smtp]\nport = {port}\n{config}")
        self.process: subprocess.Popen[str] | None = None
        self.runs = 0

    @property
    def log(self) -> Path:
        return self.home / f"serve{self.runs}.log"

    def start(self, wait_port: int | None = None) -> Serve:
        self.runs += 1
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailwarden", "serve"],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "MAILWARDEN_HOME": str(self.home)},
            )
        port = wait_port or self.port
        deadline = time.monotonic() + 30
        while not port_open(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mailwarden serve did not start: {self.log.read_text()}")
            time.sleep(0.05)
        return self

    def stop(self) -> int:
        if self.process is None:
            return 0
        self.process.terminate()
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.process = None
        return code

    def spooled(self) -> list[Path]:
        queue = self.home / "spool" / "queue"
        return sorted(queue.glob("*.msg")) if queue.is_dir() else []


def relay_config(next_hop_port: int, extra: str = "") -> str:
    """A relay-mode config with short retry times, so the tests finish in seconds."""
    return (
        "[delivery]\n"
        'mode = "relay"\n'
        f'next_hop = "127.0.0.1:{next_hop_port}"\n'
        "retry_initial = 0.5\n"
        "retry_max_interval = 1.0\n"
        "queue_scan_interval = 0.3\n"
        "connect_timeout = 5.0\n"
        f"{extra}"
    )


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    """Makes ``Serve`` instances and stops every one of them by PID at the end."""
    made: list[Serve] = []

    def make(config: str, name: str = "home", port: int | None = None) -> Serve:
        server = Serve(tmp_path / name, port or free_port(), config)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(
    sink: Sink, serve_factory: Callable[..., Serve]
) -> None:
    began = time.monotonic()
    server = serve_factory(relay_config(sink.port)).start()
    total, clients = 200, 4
    acked: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as smtp:
                for i in range(total // clients):
                    mid = f"<load-{number}-{i}@example.org>"
                    body = make_message(subject=f"load {number} {i}").replace(
                        b"Message-ID: <", b"X-Old-Id: <", 1
                    )
                    smtp.sendmail(
                        "alice@example.org",
                        ["bob@example.net"],
                        f"Message-ID: {mid}\r\n".encode() + body,
                    )
                    with lock:
                        acked.append(mid)
        except (OSError, smtplib.SMTPException):
            # The server was killed under this client: what it did not acknowledge is its own.
            return

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acked) >= total // 3, 30, "a third of the messages to be accepted")
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    server.process = None
    for thread in threads:
        thread.join(timeout=30)
    killed_at = len(acked)
    assert killed_at < total, "the kill came after the load ended; nothing was in flight"

    server.start()
    wait_until(lambda: not server.spooled(), 40, "the spool to drain after the restart")
    time.sleep(1.0)  # a duplicate would arrive after the original
    arrived = sink.message_ids()
    # A delivery cut off between the final dot and the next hop's answer is held in the
    # quarantine rather than sent again: exactly once at the sink, or in the quarantine.
    held = Counter(
        str(email.message_from_bytes(p.read_bytes())["Message-ID"]).strip()
        for p in (server.home / "quarantine" / "held").glob("*")
    )
    missing = [mid for mid in acked if arrived[mid] == 0 and held[mid] == 0]
    duplicated = {mid: n for mid, n in arrived.items() if n > 1}
    assert not missing, f"{len(missing)} acknowledged messages lost: {missing[:5]}"
    assert not duplicated, f"delivered more than once: {duplicated}"
    assert not list((server.home / "spool" / "tmp").iterdir())
    # Only deliveries in flight at the kill can be in doubt: at most [delivery] concurrency.
    assert sum(held.values()) <= 20, f"more held than were in flight: {held}"
    print(
        f"acknowledged {killed_at} of {total} before the kill; delivered "
        f"{sum(arrived.values())}; held {sum(held.values())} "
        f"({sum(1 for m in held if arrived[m])} of them had arrived)"
    )
    assert time.monotonic() - began < 60


def test_next_hop_down_keeps_the_message_until_it_comes_up(
    tmp_path: Path, serve_factory: Callable[..., Serve]
) -> None:
    down = Sink(tmp_path / "late-sink", free_port())
    server = serve_factory(relay_config(down.port)).start()
    message = make_message(subject="waits for the next hop")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        assert client.sendmail("alice@example.org", ["bob@example.net"], message) == {}
    # Several attempts fail while nothing listens; the message stays spooled meanwhile.
    time.sleep(2.0)
    assert len(server.spooled()) == 1
    state = server.spooled()[0].with_suffix(".state").read_text()
    assert '"attempts":' in state and "next hop" in state
    down.start()
    try:
        wait_until(lambda: len(down.messages()) == 1, 15, "delivery after the next hop came up")
        wait_until(lambda: not server.spooled(), 5, "the message to leave the spool")
        assert b"Subject: waits for the next hop" in down.messages()[0]
    finally:
        down.stop(remove=True)


class _Recorder:
    """aiosmtpd handler for a next hop that refuses one mailbox and records the rest."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes, bool]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 <nobody@example.net>: Recipient address rejected: no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content or envelope.content,
                session.ssl is not None,
            )
        )
        return "250 2.0.0 Ok: stored"


def _controller(handler: _Recorder, **kwargs: Any) -> Controller:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller


def test_permanent_failure_bounces_to_the_sender_but_never_to_the_null_sender(
    serve_factory: Callable[..., Serve],
) -> None:
    recorder = _Recorder()
    controller = _controller(recorder)
    try:
        server = serve_factory(relay_config(controller.port)).start()
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.sendmail("", ["nobody@example.net"], make_message(subject="bounce of bounce"))
            client.sendmail(
                "alice@example.org",
                ["nobody@example.net", "bob@example.net"],
                make_message(subject="half refused"),
            )
        wait_until(lambda: len(recorder.received) >= 2, 15, "the delivery and the DSN")
        wait_until(lambda: not server.spooled(), 5, "the spool to empty")
        time.sleep(0.5)
        assert len(recorder.received) == 2  # no DSN for the null-sender message
        delivered = next(r for r in recorder.received if r[0] == "alice@example.org")
        assert delivered[1] == ["bob@example.net"]
        _, recipients, data, _ = next(r for r in recorder.received if r[0] in ("", "<>"))
        assert recipients == ["alice@example.org"]
        dsn = email.message_from_bytes(data, policy=email.policy.default)
        assert dsn.get_content_type() == "multipart/report"
        assert dsn.get_param("report-type") == "delivery-status"
        parts = list(dsn.iter_parts())
        assert [p.get_content_type() for p in parts] == [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers",
        ]
        status = parts[1].as_string()
        assert "Final-Recipient: rfc822; nobody@example.net" in status
        assert "Action: failed" in status and "Status: 5.1.1" in status
        assert "bob@example.net" not in status
        assert b"Subject: half refused" in data
    finally:
        controller.stop()


def test_relay_uses_starttls_and_required_tls_defers_without_it(
    tmp_path: Path, sink: Sink, serve_factory: Callable[..., Serve]
) -> None:
    cert, key = tmp_path / "hop.pem", tmp_path / "hop.key"
    ensure_certificate(cert, key, "hop.example")
    context = client_context(False)
    server_ctx = __import__("ssl").create_default_context(__import__("ssl").Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    del context
    recorder = _Recorder()
    controller = _controller(recorder, tls_context=server_ctx, require_starttls=True)
    try:
        tls_server = serve_factory(
            relay_config(controller.port, 'tls = "required"\n'), name="tls"
        ).start()
        with smtplib.SMTP("127.0.0.1", tls_server.port, timeout=30) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], make_message())
        wait_until(lambda: len(recorder.received) == 1, 15, "delivery over TLS")
        assert recorder.received[0][3] is True
    finally:
        controller.stop()
    # smtp-sink offers no STARTTLS: with TLS required the message must wait, not go in clear.
    plain = serve_factory(relay_config(sink.port, 'tls = "required"\n'), name="plain").start()
    with smtplib.SMTP("127.0.0.1", plain.port, timeout=30) as client:
        client.sendmail("alice@example.org", ["bob@example.net"], make_message())
    time.sleep(1.5)
    assert sink.messages() == []
    assert "STARTTLS" in plain.spooled()[0].with_suffix(".state").read_text()


def test_dkim_signature_verifies_with_dkimpy_and_opendkim(
    tmp_path: Path, sink: Sink, serve_factory: Callable[..., Serve]
) -> None:
    import dkim

    ensure_packages("opendkim")
    keys = tmp_path / "keys"
    records = {}
    for domain, selector, algorithm in [
        ("example.org", "rsa1", "rsa"),
        ("example.com", "ed1", "ed25519"),
    ]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mailwarden",
                "dkim",
                "keygen",
                domain,
                selector,
                "--algorithm",
                algorithm,
                "--out",
                str(keys / f"{domain}.key"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        txt = next(line for line in result.stdout.splitlines() if " IN TXT " in line)
        assert txt.startswith(f"{selector}._domainkey.{domain}. IN TXT")
        record = "".join(txt.split('"')[1::2])
        assert "PRIVATE" not in result.stdout
        assert (keys / f"{domain}.key").stat().st_mode & 0o777 == 0o600
        records[f"{selector}._domainkey.{domain}"] = record
    config = relay_config(sink.port) + "".join(
        f'[[dkim.keys]]\ndomain = "{d}"\nselector = "{s}"\nkey_file = "{keys / (d + ".key")}"\n'
        for d, s in [("example.org", "rsa1"), ("example.com", "ed1")]
    )
    server = serve_factory(config).start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        for sender in ("alice@example.org", "carol@example.com"):
            client.sendmail(
                sender, ["bob@example.net"], make_message(subject=f"signed {sender}", sender=sender)
            )
    wait_until(lambda: len(sink.messages()) == 2, 15, "both signed messages")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode().rstrip("."))
        return value.encode() if value else None

    key_file = tmp_path / "opendkim-keys"
    key_file.write_text("".join(f"{n} {v}\n" for n, v in records.items()))
    conf = tmp_path / "opendkim.conf"
    conf.write_text(f"TestPublicKeys {key_file}\nSyslog no\nMode v\n")
    for data in sink.messages():
        assert data.count(b"DKIM-Signature:") == 1
        crlf = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        assert dkim.verify(crlf, dnsfunc=dnsfunc), data[:600]
        path = tmp_path / "msg.eml"
        path.write_bytes(crlf)
        result = subprocess.run(
            ["opendkim", "-x", str(conf), "-t", str(path)], capture_output=True, text=True
        )
        assert "verification" in result.stderr + result.stdout
        assert "succeeded" in result.stderr + result.stdout, result.stderr
        tampered = crlf.replace(b"Subject: signed", b"Subject: changed")
        assert not dkim.verify(tampered, dnsfunc=dnsfunc)
        path.write_bytes(tampered)
        result = subprocess.run(
            ["opendkim", "-x", str(conf), "-t", str(path)], capture_output=True, text=True
        )
        assert "failed" in result.stderr + result.stdout
    assert "PRIVATE" not in server.log.read_text()
    need(True, "")


def test_restart_resumes_the_spool_rescans_undecided_and_holds_in_doubt(
    sink: Sink, serve_factory: Callable[..., Serve]
) -> None:
    from mailwarden.spool import Spool, SpoolState
    from mailwarden_sdk import Envelope
    from tests.conftest import EICAR

    server = serve_factory(relay_config(sink.port))
    spool = Spool(server.home / "spool")
    envelope = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
    # What a crash leaves: a message spooled before its scan, one with a decision waiting for
    # its retry, one cut off after the body went out, one that is infected, and a temp file.
    for subject, state, in_doubt, attachment in [
        ("undecided", None, False, None),
        ("decided", SpoolState(decided=True, attempts=3), False, None),
        ("in doubt", SpoolState(decided=True), True, None),
        ("infected", None, False, EICAR),
    ]:
        entry = spool.write(
            make_message(subject=subject, attachment=attachment, filename="eicar.com"),
            envelope,
            state,
        )
        if in_doubt:
            spool.mark_in_doubt(entry, True)
        entry.release()
    (spool.tmp / "cut-off.msg").write_bytes(b"half a message")
    server.start()
    wait_until(lambda: not server.spooled(), 15, "the spool to be worked off")
    time.sleep(0.5)
    subjects = sorted(str(email.message_from_bytes(m)["Subject"]) for m in sink.messages())
    assert subjects == ["decided", "undecided"]
    held = list((server.home / "quarantine" / "held").iterdir())
    assert len(held) == 1
    assert b"Subject: in doubt" in held[0].read_bytes()
    assert b"X-Mailwarden-Hold:" in held[0].read_bytes()
    assert list(spool.tmp.iterdir()) == []


def test_a_message_deferred_past_max_age_is_bounced(
    serve_factory: Callable[..., Serve],
) -> None:
    recorder = _Recorder()

    async def later(
        server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("later@"):
            return "451 4.2.1 Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    recorder.handle_RCPT = later  # type: ignore[method-assign]
    controller = _controller(recorder)
    try:
        server = serve_factory(relay_config(controller.port, "max_age = 2.0\n")).start()
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.sendmail("alice@example.org", ["later@example.net"], make_message())
        time.sleep(1.0)
        assert len(server.spooled()) == 1 and recorder.received == []
        wait_until(lambda: len(recorder.received) == 1, 15, "the DSN after max_age")
        wait_until(lambda: not server.spooled(), 5, "the spool to empty")
        mail_from, recipients, data, _ = recorder.received[0]
        assert mail_from in ("", "<>") and recipients == ["alice@example.org"]
        assert b"Status: 4.4.7" in data and b"451 4.2.1 Mailbox busy" in data
    finally:
        controller.stop()


def test_refused_recipients_are_bounced_at_once_while_deferred_ones_wait(
    serve_factory: Callable[..., Serve],
) -> None:
    recorder = _Recorder()

    async def mixed(
        server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("later@"):
            return "451 4.2.1 Mailbox busy, try later"
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    recorder.handle_RCPT = mixed  # type: ignore[method-assign]
    controller = _controller(recorder)
    try:
        server = serve_factory(relay_config(controller.port)).start()
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.sendmail(
                "alice@example.org", ["nobody@example.net", "later@example.net"], make_message()
            )
        wait_until(lambda: len(recorder.received) == 1, 10, "the DSN for the refused recipient")
        _, recipients, data, _ = recorder.received[0]
        assert recipients == ["alice@example.org"] and b"nobody@example.net" in data
        assert b"Final-Recipient: rfc822; later@example.net" not in data
        # The deferred recipient keeps the message spooled, and is the only one retried.
        time.sleep(1.5)
        assert len(server.spooled()) == 1 and len(recorder.received) == 1
        state = server.spooled()[0].with_suffix(".state").read_text()
        assert "nobody@example.net" in state and "Mailbox busy" in state
    finally:
        controller.stop()


def test_notifications_go_out_through_the_relay_from_the_null_sender(
    sink: Sink, serve_factory: Callable[..., Serve]
) -> None:
    rules = (
        '[[rules]]\nname = "default"\n[rules.actions]\ninfected = "quarantine"\n'
        '[rules.notify]\nadmin = ["admin@example.org"]\nrecipients = true\n'
    )
    server = serve_factory(relay_config(sink.port) + rules).start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.sendmail(
            "alice@example.org",
            ["bob@example.net"],
            make_message(subject="held one", attachment=EICAR, filename="x.com"),
        )
    wait_until(lambda: len(sink.messages()) >= 2, 30, "two notices at the next hop")
    notices = [email.message_from_bytes(m, policy=email.policy.default) for m in sink.messages()]
    assert sorted(str(n["To"]) for n in notices) == ["admin@example.org", "bob@example.net"]
    for notice in notices:
        assert notice["X-Mail-Args"] == "<>"  # smtp-sink's record of MAIL FROM: the null sender
        assert notice["Auto-Submitted"] == "auto-replied"
        assert "held one" in str(notice["Subject"])
    # The held message itself stays in the quarantine, not at the next hop.
    assert not any(b"X-Mailwarden-Virus" in m for m in sink.messages())

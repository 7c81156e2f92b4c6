"""Shared test helpers: corpus location, required-resource policy, message builders."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import tempfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.netguard import sitecustomize as netguard

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_ALL = os.environ.get("MAILWARDEN_REQUIRE_ALL") == "1"

# Traffic stays on 127.0.0.1, in this process and in every Python process a test starts (see
# tests/netguard/sitecustomize.py); anything refused is listed at the end and fails the session.
# pytest-xdist workers (`make test PYTEST_WORKERS=2`) import this file again: they write to
# the log of the run that started them, which reads it at the end.
_INHERITED_LOG = (
    os.environ.get("MAILWARDEN_NETGUARD_LOG") if os.environ.get("PYTEST_XDIST_WORKER") else None
)
NETGUARD_LOG = (
    Path(_INHERITED_LOG)
    if _INHERITED_LOG
    else Path(tempfile.mkdtemp(prefix="mailwarden-netguard-")) / "refused.log"
)
os.environ["MAILWARDEN_NETGUARD_LOG"] = str(NETGUARD_LOG)
_RESOLV = NETGUARD_LOG.with_name("resolv.conf")
if not _INHERITED_LOG:
    _RESOLV.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
os.environ["MAILWARDEN_NETGUARD_RESOLV"] = str(_RESOLV)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT / "tests" / "netguard"), os.environ.get("PYTHONPATH", "")) if p
)
netguard.install()


def pytest_configure(config: pytest.Config) -> None:
    # Imported here: tests.services itself imports this module.
    from tests.services.dns_zone import ZoneServer

    server = ZoneServer({}).start()  # knows no names; daemon threads end with the session
    os.environ["MAILWARDEN_NETGUARD_DNS_PORT"] = str(server.port)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (pytest-xdist) a file's tests run on one worker, so a module
    fixture starts its service once; the files that install the wheel share its one build."""
    if not config.getoption("loadgroup", default=False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            shared = "built_wheel" in getattr(item, "fixturenames", ())
            group = "built_wheel" if shared else item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(group))


def _refused_traffic() -> list[str]:
    return NETGUARD_LOG.read_text().splitlines() if NETGUARD_LOG.exists() else []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _refused_traffic():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    refused = _refused_traffic()
    if refused:
        terminalreporter.section("traffic refused: tests send to 127.0.0.1 only", red=True)
        for line in refused[:50]:
            terminalreporter.line(line)


# The EICAR test file, assembled at run time so that scanners on developers' machines do not
# quarantine this source file.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS" + b"-TEST-FILE!$H+H*"


def need(condition: bool, reason: str) -> None:
    """Skip the test when a service or the corpus is missing; fail instead in CI.

    ``MAILWARDEN_REQUIRE_ALL=1`` (set by .ci/run) turns every such skip into a failure, so CI
    never goes green by skipping what it was meant to test.
    """
    if condition:
        return
    if REQUIRE_ALL:
        pytest.fail(f"required resource missing (MAILWARDEN_REQUIRE_ALL=1): {reason}")
    pytest.skip(reason)


def corpus_dir() -> Path:
    """``$MAILWARDEN_CORPUS`` or ``../shared/corpus`` beside the repository."""
    return Path(os.environ.get("MAILWARDEN_CORPUS") or ROOT.parent / "shared" / "corpus")


@pytest.fixture
def corpus() -> Path:
    """The shared corpus directory (skips, or fails in CI, when it is absent)."""
    path = corpus_dir()
    need(path.is_dir(), f"corpus not found at {path} (set MAILWARDEN_CORPUS)")
    return path


# Not the module-level generator, which hypothesis seeds alike in every process.
_PORTS = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Drawn below the kernel's ephemeral range: a client socket (of this run, another worker of
    it or another program) takes its port from that range, so it cannot take this one before
    the test's server binds it (seen as "Address already in use" under pytest-xdist).
    """
    low = _ephemeral_low()
    for _ in range(200) if low > 11000 else ():
        port = _PORTS.randrange(10000, low)
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_message(
    subject: str = "hello",
    body: str = "Just a clean message.\n",
    attachment: bytes | None = None,
    filename: str = "file.bin",
    sender: str = "alice@example.org",
    recipient: str = "bob@example.net",
) -> bytes:
    """A well-formed message, optionally with a base64 attachment, as SMTP would carry it."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{abs(hash((subject, body, filename)))}@example.org>"
    msg["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename=filename
        )
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def install_fake_distribution(
    site: Path, name: str, version: str, entry_points: dict[str, str]
) -> Path:
    """Make ``site`` hold an installed distribution with ``mailwarden`` entry points.

    Putting ``site`` on PYTHONPATH is then exactly what ``pip install`` of a third-party
    plugin does for the gateway: importlib.metadata finds the dist-info and its entry points.
    """
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[mailwarden]\n{lines}")
    return site


@pytest.fixture
def thirdparty_dist(tmp_path: Path) -> Path:
    """A site directory where the test detectors are installed as distribution acme-marker."""
    return install_fake_distribution(
        tmp_path / "site",
        "acme-marker",
        "1.2.3",
        {
            "marker": "tests.thirdparty.detectors:MarkerDetector",
            "markertools": "tests.thirdparty.detectors:MarkerTools",
            "markerstore": "tests.thirdparty.detectors:MarkerStore",
        },
    )


# CI runs a fixed sequence of examples, so a red build always means a change, never a new
# random draw; locally each run draws anew (and keeps what fails in .hypothesis/) to find more.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("MAILWARDEN_REQUIRE_ALL") == "1":
    _hypothesis_settings.load_profile("ci")

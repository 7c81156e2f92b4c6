"""The wheel as a user installs it: a fresh virtualenv, no checkout, `mailwarden serve` on its
defaults, and a spam (GTUBE) and an EICAR message caught.

The wheel is built once per session from a copy of the checkout's files (``built_wheel``: a
build/ or a compiled core left in the checkout cannot lend it anything). The virtualenv gets the
wheel and, linked in from the test environment, exactly the distributions its runtime
requirements name (transitively): no test extra, no editable install, nothing of the source
tree. Only the netguard's sitecustomize is on PYTHONPATH, so the gateway's traffic is still
watched.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import EICAR, ROOT, free_port, make_message

pytestmark = pytest.mark.integration

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="session")
def wheel(built_wheel: tuple[Path, Path]) -> Path:
    return built_wheel[1]


def _runtime_distributions() -> set[str]:
    """mailwarden's runtime requirements and theirs, as installed here (no extras)."""
    wanted: set[str] = set()
    todo = [Requirement(r) for r in md.requires("mailwarden") or []]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in wanted:
            continue
        wanted.add(name)
        todo += [Requirement(r) for r in md.requires(name) or []]
    return wanted


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    deps = tmp_path / "deps"
    deps.mkdir()
    for dist in md.distributions():
        if canonicalize_name(dist.metadata["Name"]) not in _runtime_distributions():
            continue
        top = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for name in top:
            origin = Path(str(dist.locate_file(name)))
            if origin.exists() and not (deps / name).exists():
                (deps / name).symlink_to(origin)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "runtime-deps.pth").write_text(f"{deps}\n")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")),
            *("install", "-q", "--no-deps", "--no-index", str(wheel)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv


@pytest.fixture
def served(tmp_path: Path, wheel: Path) -> Iterator[tuple[Path, int, Path]]:
    venv = _fresh_venv(tmp_path, wheel)
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    # The defaults but for the ports, which other tests may hold.
    (home / "mailwarden.toml").write_text(f"[smtp]\nport = {port}\n[web]\nport = {free_port()}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWARDEN_CONFIG")}
    env.update(MAILWARDEN_HOME=str(home), PYTHONPATH=str(ROOT / "tests" / "netguard"))
    probe = "import mailwarden, mailwarden_native as n; print(mailwarden.__file__, n.__file__)"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert all(line.startswith(str(venv)) for line in where.stdout.split()), where.stdout
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(venv / "bin" / "mailwarden"), "serve"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "ready" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield venv, port, home
    finally:
        process.terminate()
        process.wait(timeout=60)


def _send(port: int, raw: bytes) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        try:
            client.sendmail("sender@example.org", ["bob@example.net"], raw)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
    return 250, ""


def test_installed_wheel_serves_and_catches_spam_and_eicar(
    served: tuple[Path, int, Path],
) -> None:
    venv, port, home = served
    spam = make_message(subject="offer", body=f"Buy now.\r\n{GTUBE}\r\n")
    virus = make_message(
        subject="tool", body="See attached.\r\n", attachment=EICAR, filename="e.com"
    )
    clean = make_message(subject="lunch", body="Noon at the usual place?\r\n")
    spam_code, spam_text = _send(port, spam)
    virus_code, virus_text = _send(port, virus)
    assert 500 <= spam_code < 600, spam_text
    assert 500 <= virus_code < 600 and "Eicar" in virus_text, virus_text
    assert _send(port, clean) == (250, "")
    deadline = time.monotonic() + 30
    while not list((home / "maildir" / "new").glob("*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    (delivered,) = (home / "maildir" / "new").iterdir()
    assert b"Subject: lunch" in delivered.read_bytes()
    events = subprocess.run(
        [str(venv / "bin" / "mailwarden"), "events", "--json"],
        env={**os.environ, "MAILWARDEN_HOME": str(home), "PYTHONPATH": ""},
        cwd=home,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    recorded = sorted(
        (json.loads(line)["subject"], json.loads(line)["action"])
        for line in events.stdout.splitlines()
    )
    assert recorded == [("lunch", "deliver"), ("offer", "reject"), ("tool", "reject")]


def test_wheel_carries_every_data_file_and_the_native_core(wheel: Path) -> None:
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", "core", "plugins", "sdk", "native/mailwarden_native"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    # Everything inside a package folder: rules, templates, static assets, signatures, the
    # default config (a top-level folder like core/ or plugins/ is not in the wheel's paths).
    data = [path.split("/", 1)[1] for path in tracked if not path.endswith(".py")]
    assert "mailwarden/default_config.toml" in data
    assert any(path.startswith("mailwarden/web/static/") for path in data)
    assert [path for path in data if path not in names] == []
    assert any(n.startswith("mailwarden_native/_core") and n.endswith(".so") for n in names)

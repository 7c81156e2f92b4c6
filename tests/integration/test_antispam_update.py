"""'mailwarden antispam rules update' against a rule channel served on 127.0.0.1.

Good channel, bad signature, unsigned, truncated, damaged, and the channel down: only the
good one changes the installed rules, and a running plugin picks them up without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mailwarden.cli import cli
from mailwarden_antispam import AntispamConfig, AntispamPlugin
from mailwarden_antispam.update import current_rules
from mailwarden_sdk import Envelope, ScanContext, parse
from tests.conftest import free_port, make_message

pytestmark = pytest.mark.integration

CHANNEL_RULES = {
    "60_channel.cf": "body MW_CHANNEL_TEST /\\bzanzibar widgets\\b/i\n"
    "describe MW_CHANNEL_TEST Channel test rule\nscore MW_CHANNEL_TEST 3.5\n",
    "61_more.cf": "header MW_CHANNEL_SUBJ Subject =~ /widget sale/i\nscore MW_CHANNEL_SUBJ 1.0\n",
}


def _tarball(files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


class Channel:
    """An HTTP rule channel: path -> (body, declared length or None)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, int | None]] = {}
        channel = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = channel.files.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                body, declared = found
                self.send_response(200)
                self.send_header("Content-Length", str(declared or len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/rules.tar.gz"

    def publish(self, tarball: bytes, signature: bytes | None, declared: int | None = None) -> None:
        self.files = {"/rules.tar.gz": (tarball, declared)}
        if signature is not None:
            self.files["/rules.tar.gz.sig"] = (signature, None)


@pytest.fixture
def channel() -> Iterator[Channel]:
    served = Channel()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _home(tmp_path: Path, url: str, key: Ed25519PrivateKey) -> dict[str, str]:
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "mailwarden.toml").write_text(
        "[antispam]\nauthentication = false\ndns_servers = ['127.0.0.1']\n"
        f"update_url = '{url}'\nupdate_public_key = '{base64.b64encode(public).decode()}'\n"
    )
    return {"MAILWARDEN_HOME": str(home)}


def _update(env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["antispam", "rules", "update", "--timeout", "5"], env=env)
    return result.exit_code, result.output


def _root(env: dict[str, str]) -> Path:
    return Path(env["MAILWARDEN_HOME"]) / "antispam" / "rules-update"


def test_a_signed_channel_is_installed_and_a_running_plugin_loads_it(
    tmp_path: Path, channel: Channel, key: Ed25519PrivateKey
) -> None:
    env = _home(tmp_path, channel.url, key)
    plugin = AntispamPlugin()
    plugin.configure(
        AntispamConfig(authentication=False), Path(env["MAILWARDEN_HOME"]) / "antispam"
    )
    spam = make_message(subject="Widget sale", body="Buy zanzibar widgets today\r\n")

    def codes() -> set[str]:
        ctx = ScanContext(
            Envelope(mail_from="a@example.org", rcpt_to=["b@example.net"]), parse(spam)
        )
        return {f.code for f in asyncio.run(plugin.mailwarden_scan(ctx))}

    assert "MW_CHANNEL_TEST" not in codes()
    tarball = _tarball(CHANNEL_RULES)
    channel.publish(tarball, key.sign(tarball))
    status, output = _update(env)
    assert status == 0, output
    assert "installed rules" in output and "2 rules" in output
    # The channel's rules replace the built-in ones; the plugin follows the switch.
    plugin._update_checked = 0.0
    assert {"MW_CHANNEL_TEST", "MW_CHANNEL_SUBJ"} <= codes()
    assert len(plugin.rules.rules) == 2
    # Fetched again: nothing new (sa-update's exit 1), nothing changes.
    status, output = _update(env)
    assert status == 1 and "are current" in output


@pytest.mark.parametrize(
    "case", ["bad signature", "unsigned", "truncated", "damaged", "not a rule file", "down"]
)
def test_a_bad_channel_is_refused_and_the_installed_rules_stay(
    case: str, tmp_path: Path, channel: Channel, key: Ed25519PrivateKey
) -> None:
    env = _home(tmp_path, channel.url, key)
    good = _tarball(CHANNEL_RULES)
    channel.publish(good, key.sign(good))
    assert _update(env)[0] == 0
    installed = current_rules(_root(env))
    assert installed is not None
    before = sorted(p.name for p in installed.iterdir())
    newer = _tarball({"60_channel.cf": "body MW_NEWER /newer/\n"})
    if case == "bad signature":
        channel.publish(newer, Ed25519PrivateKey.generate().sign(newer))
    elif case == "unsigned":
        channel.publish(newer, None)
    elif case == "truncated":  # the connection ends before the declared length
        channel.publish(newer[: len(newer) // 2], key.sign(newer), declared=len(newer))
    elif case == "damaged":  # cut short and signed as such: the tarball does not unpack
        channel.publish(newer[:40], key.sign(newer[:40]))
    elif case == "not a rule file":
        evil = _tarball({"../../escape.cf": "body X /x/\n"})
        channel.publish(evil, key.sign(evil))
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{probe.getsockname()[1]}/rules.tar.gz"
        env = _home(tmp_path, closed, key)
    status, output = _update(env)
    assert status == 4, output
    expected = {
        "bad signature": "bad signature",
        "unsigned": "unsigned",
        "truncated": "truncated",
        "damaged": "damaged",
        "not a rule file": "only *.cf files",
        "down": "unreachable",
    }[case]
    assert expected in output and "the installed rules stay" in output
    assert current_rules(_root(env)) == installed
    assert sorted(p.name for p in installed.iterdir()) == before
    assert not list(_root(env).glob(".staging-*"))
    assert not (tmp_path / "escape.cf").exists()

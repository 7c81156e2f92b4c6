"""Signature updates: signed mirrors (directory and HTTP), verification, atomic swap, info."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from nacl.signing import SigningKey

from mailwarden.cli import cli
from mailwarden.testing import scan
from tests.conftest import make_message

MARKER = b"MAILWARDEN-UPDATE-TEST-MARKER-0001"


def _mirror(directory: Path, version: str, key: SigningKey, marker: bytes = MARKER) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    ndb = f"Update.Test.Marker-{version}:0:*:{marker.hex()}\n".encode()
    (directory / "update.ndb").write_bytes(ndb)
    manifest = json.dumps(
        {"version": version, "files": {"update.ndb": hashlib.sha256(ndb).hexdigest()}}
    ).encode()
    (directory / "manifest.json").write_bytes(manifest)
    signature = base64.b64encode(key.sign(manifest).signature)
    (directory / "manifest.json.sig").write_bytes(signature)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Path, SigningKey]]:
    key = SigningKey.generate()
    public = base64.b64encode(bytes(key.verify_key)).decode()
    (tmp_path / "mailwarden.toml").write_text(
        f'[antivirus.updates]\npublic_key = "{public}"\ncheck_interval = 0.0\n'
    )
    yield tmp_path, key


def _run(home: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*args, "--config", str(home / "mailwarden.toml")])
    return result.exit_code, result.output


def test_a_signed_set_is_installed_and_detects(home: tuple[Path, SigningKey]) -> None:
    path, key = home
    _mirror(path / "mirror", "2026112801", key)
    code, out = _run(path, "sigs", "update", "--from", str(path / "mirror"))
    assert code == 0 and "installed version 2026112801" in out, out
    config = (path / "mailwarden.toml").read_text()
    raw = make_message(attachment=MARKER + b" in a file")
    decision = scan(raw, config=config, builtins=True, home=path)
    assert decision.verdict.virus_names == ["Update.Test.Marker-2026112801"]
    code, out = _run(path, "sigs", "info")
    assert "installed update  2026112801" in out and "version 2026112801 installed" in out
    # The same version again changes nothing.
    code, out = _run(path, "sigs", "update", "--from", str(path / "mirror"))
    assert code == 0 and "already installed" in out


@pytest.mark.parametrize("damage", ["file", "signature", "manifest-name"])
def test_a_damaged_set_is_refused_and_the_current_one_stays(
    home: tuple[Path, SigningKey], damage: str
) -> None:
    path, key = home
    _mirror(path / "good", "1", key)
    assert _run(path, "sigs", "update", "--from", str(path / "good"))[0] == 0
    bad = path / "bad"
    _mirror(bad, "2", key)
    if damage == "file":
        (bad / "update.ndb").write_bytes(b"Evil:0:*:41414141\n")
    elif damage == "signature":
        _mirror(bad, "2", SigningKey.generate())  # signed by somebody else
    else:
        manifest = json.dumps({"version": "2", "files": {"../../etc/x.ndb": "0" * 64}}).encode()
        (bad / "manifest.json").write_bytes(manifest)
        (bad / "manifest.json.sig").write_bytes(base64.b64encode(key.sign(manifest).signature))
    code, out = _run(path, "sigs", "update", "--from", str(bad))
    assert code != 0 and "update refused, current set kept" in out
    assert (path / "antivirus" / "updates" / "current").resolve().name == "1"
    assert "refused" in _run(path, "sigs", "info")[1]


def test_a_running_gateway_switches_to_a_new_set_without_restart(
    home: tuple[Path, SigningKey],
) -> None:
    import asyncio

    from mailwarden import Gateway
    from mailwarden.config import load_config
    from mailwarden.plugins import build_plugin_manager
    from mailwarden_sdk import Envelope

    path, key = home
    other = b"MAILWARDEN-UPDATE-TEST-MARKER-0002"
    _mirror(path / "v1", "1", key)
    _mirror(path / "v2", "2", key, marker=other)
    assert _run(path, "sigs", "update", "--from", str(path / "v1"))[0] == 0
    plugins = build_plugin_manager()
    config = load_config(path / "mailwarden.toml", plugins.config_schemas())

    async def run() -> list[list[str]]:
        async with Gateway(config, plugins=plugins) as gateway:
            raw = make_message(attachment=other)
            before = (await gateway.scan(raw, Envelope())).verdict.virus_names
            assert _run(path, "sigs", "update", "--from", str(path / "v2"))[0] == 0
            after = (await gateway.scan(raw, Envelope())).verdict.virus_names
            return [before, after]

    assert asyncio.run(run()) == [[], ["Update.Test.Marker-2"]]


def test_an_https_or_signed_http_mirror_is_fetched(home: tuple[Path, SigningKey]) -> None:
    path, key = home
    _mirror(path / "served", "7", key)
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(path / "served")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        code, out = _run(path, "sigs", "update", "--from", url)
        assert code == 0 and "installed version 7" in out, out
        # Without a key, nothing vouches for plain HTTP: refused.
        (path / "mailwarden.toml").write_text("[antivirus.updates]\ncheck_interval = 0.0\n")
        code, out = _run(path, "sigs", "update", "--from", url)
        assert code != 0 and "needs public_key" in out
    finally:
        server.shutdown()

"""The clamd backend against a real clamd on 127.0.0.1: same verdicts as the native engine.

Both engines load the same custom database (the EICAR test signatures of the AV corpus and a
marker signature) and see the same messages through the whole pipeline.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailwarden.config import parse_config
from mailwarden.pipeline import Gateway
from mailwarden.plugins import build_plugin_manager
from mailwarden.testing import GatewayRunner, build_message
from mailwarden_antivirus import AntivirusPlugin
from mailwarden_sdk import Envelope
from tests.conftest import EICAR, corpus_dir, need
from tests.services.clamd import Clamd, running_clamd

pytestmark = pytest.mark.integration

MARKER = b"MAILWARDEN-TEST-MALWARE-MARKER"
ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])


@pytest.fixture(scope="module")
def databases(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    eicar = corpus_dir() / "av" / "eicar"
    need((eicar / "eicar.ndb").is_file(), f"AV corpus not found at {eicar}")
    own = tmp_path_factory.mktemp("sigs") / "lab.ndb"
    own.write_text(f"Lab.Test.Marker:0:*:{MARKER.hex()}\n")
    return [eicar / "eicar.ndb", eicar / "eicar.hdb", eicar / "eicar.hsb", own]


@pytest.fixture(scope="module")
def clamd(databases: list[Path]) -> Iterator[Clamd]:
    with running_clamd(databases) as server:
        yield server


def zipped(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return out.getvalue()


def targz(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


MESSAGES = {
    "clean": build_message(body="Nothing to see.\n"),
    "clean-zip": build_message(attachments=[("a.zip", zipped("a.txt", b"plain text\n"))]),
    "eicar": build_message(attachments=[("eicar.com", EICAR)]),
    "eicar-zip-zip": build_message(attachments=[("o.zip", zipped("i.zip", zipped("e", EICAR)))]),
    "eicar-tar-gz": build_message(attachments=[("e.tar.gz", targz("e.com", EICAR))]),
    "marker-text": build_message(body=f"a line with {MARKER.decode()} inside\n"),
    "marker-gz": build_message(attachments=[("m.gz", gzip.compress(b"x " + MARKER))]),
}


def verdicts(home: Path, config: str) -> dict[str, tuple[str, set[str]]]:
    plugins = build_plugin_manager(entry_points=False, extra={"antivirus": AntivirusPlugin})
    cfg = parse_config(config, plugins.config_schemas())
    cfg.gateway.home = str(home)
    runner = GatewayRunner(Gateway(cfg, plugins=plugins)).start()
    try:
        out: dict[str, tuple[str, set[str]]] = {}
        for name, raw in MESSAGES.items():
            verdict: Any = runner.process(raw, ENVELOPE).decision.verdict
            # clamd marks names from unofficial databases; the signature is the same
            names = {n.removesuffix(".UNOFFICIAL") for n in verdict.virus_names}
            out[name] = (verdict.antivirus.value, names)
        return out
    finally:
        runner.stop()


def test_clamd_backend_gives_the_native_engines_verdicts(
    tmp_path: Path, clamd: Clamd, databases: list[Path]
) -> None:
    sigs = json.dumps([str(p) for p in databases])
    native = verdicts(
        tmp_path / "native", f"[antivirus]\nbuiltin_signatures = false\nsignatures = {sigs}\n"
    )
    remote = verdicts(
        tmp_path / "clamd",
        f'[antivirus]\nengines = ["clamd"]\n[antivirus.clamd]\naddress = "{clamd.address}"\n',
    )
    # Same status for every message; clamd stops at the first signature matching an object
    # (INSTREAM has no all-match mode), so its names are some of the native engine's.
    assert {k: v[0] for k, v in remote.items()} == {k: v[0] for k, v in native.items()}
    for name, (status, found) in remote.items():
        assert found <= native[name][1], name
        assert bool(found) == (status == "infected"), name
    assert native["clean"] == ("clean", set())
    assert native["eicar-zip-zip"][0] == "infected"
    assert native["marker-gz"] == ("infected", {"Lab.Test.Marker"})


def test_unreachable_clamd_is_an_error_status(tmp_path: Path) -> None:
    with running_clamd([corpus_dir() / "av" / "eicar" / "eicar.ndb"]) as server:
        address = server.address
    # stopped: nothing listens there any more
    config = f'[antivirus]\nengines = ["clamd"]\n[antivirus.clamd]\naddress = "{address}"\n'
    result = verdicts(tmp_path, config)
    assert result["eicar"][0] == "error"

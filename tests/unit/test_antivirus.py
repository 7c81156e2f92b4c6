"""The antivirus plugin through the whole pipeline: every wrapping of EICAR, archive limits and
statuses, corpus parity, and no detection on clean mail.

Each test hands a message to a real gateway (spool, parse, detectors, decision, action, event
log) and reads the outcome; nothing is mocked.
"""

from __future__ import annotations

import binascii
import bz2
import csv
import gzip
import io
import json
import lzma
import quopri
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mailwarden.config import parse_config
from mailwarden.pipeline import Gateway
from mailwarden.plugins import build_plugin_manager
from mailwarden.stores.backup import BackupEntry, BackupStore
from mailwarden.testing import GatewayRunner, build_message
from mailwarden_antivirus import AntivirusPlugin
from mailwarden_sdk import Action, Envelope, ScanContext, Verdict, hookimpl, parse
from tests.conftest import EICAR, corpus_dir, need
from tests.services import ensure_packages

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
EICAR_NAME = "Eicar-Test-Signature"


class Run:
    """A gateway with only the antivirus plugin, driven synchronously."""

    def __init__(self, home: Path, config: str = "") -> None:
        plugins = build_plugin_manager(entry_points=False, extra={"antivirus": AntivirusPlugin})
        cfg = parse_config(config, plugins.config_schemas())
        cfg.gateway.home = str(home)
        self.runner = GatewayRunner(Gateway(cfg, plugins=plugins)).start()

    def process(self, raw: bytes) -> Any:
        return self.runner.process(raw, ENVELOPE)

    def scan(self, raw: bytes) -> Any:
        return self.runner.scan(raw, ENVELOPE)

    def close(self) -> None:
        self.runner.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Run]:
    run = Run(tmp_path / "home")
    try:
        yield run
    finally:
        run.close()


def process_with(tmp_path: Path, raw: bytes, config: str) -> Any:
    run = Run(tmp_path / "home-cfg", config)
    try:
        return run.process(raw)
    finally:
        run.close()


def av_findings(outcome: Any) -> list[tuple[str, str, dict[str, str]]]:
    return [
        (f.code, f.status, f.details)
        for f in outcome.decision.verdict.findings
        if f.detector == "antivirus"
    ]


def assert_infected(outcome: Any, name: str = EICAR_NAME, where: str | None = None) -> None:
    verdict = outcome.decision.verdict
    assert verdict.antivirus.value == "infected", av_findings(outcome)
    assert name in verdict.virus_names
    assert outcome.reply_code == 550  # the default rule rejects infected mail
    assert outcome.event is not None and outcome.event.verdict.antivirus.value == "infected"
    if where is not None:
        objects = {f.details.get("object") for f in verdict.findings if f.code == "AV_INFECTED"}
        assert where in objects, objects


# -- archive builders ---------------------------------------------------------------------------


def zipped(name: str, data: bytes, *, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        archive.writestr(name, data)
    return out.getvalue()


def tarred(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def sevenzipped(name: str, data: bytes, password: str | None = None) -> bytes:
    import py7zr

    out = io.BytesIO()
    with py7zr.SevenZipFile(out, "w", password=password) as archive:
        if password:
            archive.set_encrypted_header(True)
        archive.writestr(data, name)
    return out.getvalue()


def attached_message(inner: bytes, *, encode: bool = False) -> bytes:
    """``inner`` attached as message/rfc822: as RFC 2046 wants it (7bit, parsed into parts),
    or base64-encoded as some clients send it (``encode``)."""
    msg = EmailMessage()
    msg["From"] = "alice@example.org"
    msg["To"] = "bob@example.net"
    msg["Subject"] = "forwarded"
    msg.set_content("See the attached message.\n")
    if encode:
        msg.add_attachment(inner, maintype="message", subtype="rfc822", filename="fwd.eml")
    else:
        msg.add_attachment(message_from_bytes(inner, policy=default))
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def single_part(body: bytes, encoding: str, content_type: str = "text/plain") -> bytes:
    head = (
        "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: t\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    )
    return head.encode() + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# -- EICAR in every wrapping --------------------------------------------------------------------


def test_eicar_base64_attachment(gateway: Run) -> None:
    raw = build_message(attachments=[("eicar.com", EICAR)])
    assert b"base64" in raw
    assert_infected(gateway.process(raw), where="eicar.com")


def test_eicar_quoted_printable(gateway: Run) -> None:
    # QP-encode with a soft break in the middle so the raw bytes do not hold the string
    encoded = quopri.encodestring(EICAR, quotetabs=True)
    encoded = encoded[:30] + b"=\n" + encoded[30:]
    raw = single_part(encoded + b"\n", "quoted-printable", "application/octet-stream")
    assert EICAR not in raw
    assert_infected(gateway.process(raw))


def test_eicar_uuencoded_in_a_text_body(gateway: Run) -> None:
    lines = [binascii.b2a_uu(EICAR[i : i + 45]) for i in range(0, len(EICAR), 45)]
    body = b"Here it is:\n\nbegin 644 eicar.com\n" + b"".join(lines) + b"`\nend\n"
    raw = single_part(body, "7bit")
    assert EICAR not in raw
    assert_infected(gateway.process(raw), where="part 0/eicar.com")


def test_eicar_inside_zip_inside_zip(gateway: Run) -> None:
    raw = build_message(attachments=[("outer.zip", zipped("inner.zip", zipped("e.com", EICAR)))])
    assert_infected(gateway.process(raw), where="outer.zip/inner.zip/e.com")


def test_eicar_inside_tar_gz(gateway: Run) -> None:
    data = gzip.compress(tarred("dir/eicar.com", EICAR))
    raw = build_message(attachments=[("files.tar.gz", data)])
    assert_infected(gateway.process(raw), where="files.tar.gz/(decompressed)/dir/eicar.com")


@pytest.mark.parametrize(
    ("suffix", "pack"), [(".bz2", bz2.compress), (".xz", lzma.compress), (".gz", gzip.compress)]
)
def test_eicar_inside_single_file_compression(gateway: Run, suffix: str, pack: Any) -> None:
    raw = build_message(attachments=[("eicar" + suffix, pack(EICAR * 3))])
    assert_infected(gateway.process(raw), where=f"eicar{suffix}/(decompressed)")


def test_eicar_inside_7z(gateway: Run) -> None:
    raw = build_message(attachments=[("a.7z", sevenzipped("eicar.com", EICAR))])
    assert_infected(gateway.process(raw), where="a.7z/eicar.com")


@pytest.mark.parametrize("encode", [False, True], ids=["7bit", "base64"])
def test_eicar_inside_an_attached_message(gateway: Run, encode: bool) -> None:
    inner = build_message(subject="inner", attachments=[("eicar.com", EICAR)])
    raw = attached_message(inner, encode=encode)
    assert EICAR not in raw
    if not encode:
        assert b"Content-Type: message/rfc822" in raw and b"Subject: inner" in raw
    outcome = gateway.process(raw)
    assert_infected(outcome, where="fwd.eml/eicar.com" if encode else "eicar.com")


def test_eicar_in_a_message_inside_a_zip(gateway: Run) -> None:
    inner = build_message(subject="inner", attachments=[("eicar.com", EICAR)])
    raw = build_message(attachments=[("mail.zip", zipped("saved.eml", inner))])
    assert_infected(gateway.process(raw), where="mail.zip/saved.eml/eicar.com")


def test_eicar_stored_uncompressed_in_zip_is_found_by_the_whole_message_too(
    gateway: Run,
) -> None:
    data = zipped("e.com", EICAR, method=zipfile.ZIP_STORED)
    outcome = gateway.process(build_message(attachments=[("x.zip", data)]))
    assert_infected(outcome, where="x.zip/e.com")


# -- corpus --------------------------------------------------------------------------------------


def av_corpus() -> Path:
    path = corpus_dir() / "av"
    need((path / "EXPECTED.json").is_file(), f"AV corpus not found at {path}")
    return path


def as_message(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".eml" or path.name.endswith(".mbox.base64"):
        return data
    return build_message(attachments=[(path.name, data)])


def test_eicar_in_every_corpus_wrapping(gateway: Run) -> None:
    samples = [
        p
        for p in sorted((av_corpus() / "eicar").iterdir())
        if p.suffix not in (".hdb", ".hsb", ".ndb")
    ]
    assert len(samples) >= 8
    for sample in samples:
        assert_infected(gateway.process(as_message(sample)))


def test_corpus_files_with_clamav_test_databases(tmp_path: Path) -> None:
    ensure_packages("libarchive13", "p7zip-full", "lhasa", "unar")  # make av-packages
    av = av_corpus()
    expected = json.loads((av / "EXPECTED.json").read_text())
    databases = [str(p) for pattern in expected["databases"] for p in sorted(av.glob(pattern))]
    config = f"[antivirus]\nbuiltin_signatures = false\nsignatures = {json.dumps(databases)}\n"
    run = Run(tmp_path / "home", config)
    try:
        mismatches = []
        for rel, entry in sorted(expected["files"].items()):
            want = {n.removesuffix(".UNOFFICIAL") for n in entry["clamscan_1.4.6_detections"]}
            outcome = run.process(as_message(av / rel))
            verdict = outcome.decision.verdict
            got = set(verdict.virus_names)
            # ALZ (unar), the first volume of a split zip (by its local headers), an ISO
            # image whose Joliet tree is empty (its primary tree) and an LHA archive lhasa
            # lists nothing of (unar) are read like every other file: no exception
            if "ole2_encryption" in rel:
                if verdict.antivirus.value != "encrypted":
                    mismatches.append((rel, verdict.antivirus.value))
            elif "/zstd/" in rel:
                # Debian's ClamAV has no zstd; upstream's test expects this name inside
                if got != {"ZSTD_TEST_FILE"}:
                    mismatches.append((rel, sorted(got)))
            elif not want <= got or got - want:
                mismatches.append((rel, sorted(want), sorted(got)))
        assert mismatches == []
    finally:
        run.close()


def test_7z_inside_zip_from_the_corpus_is_unpacked(tmp_path: Path) -> None:
    sample = av_corpus() / "clamav-other-scanfiles" / "v1rusv1rus.7z.zip"
    sigs = tmp_path / "sigs"
    sigs.mkdir()
    # as the upstream test does, a signature for the text inside the 7z
    (sigs / "v.ndb").write_text(f"Test.VirusVirus:0:*:{b'v1rusv1rus'.hex()}\n")
    config = f'[antivirus]\nbuiltin_signatures = false\nsignatures = ["{sigs}"]\n'
    outcome = process_with(tmp_path, as_message(sample), config)
    assert_infected(
        outcome, "Test.VirusVirus", where="v1rusv1rus.7z.zip/v1rusv1rus.7z/virusvirus.txt"
    )


# -- limits and statuses ------------------------------------------------------------------------


def statuses(outcome: Any) -> dict[str, dict[str, str]]:
    return {code: details for code, _, details in av_findings(outcome)}


def test_zip_bomb_is_not_scanned_by_ratio(tmp_path: Path) -> None:
    bomb = zipped("zeros.bin", bytes(32 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    outcome = process_with(tmp_path, build_message(attachments=[("bomb.zip", bomb)]), "")
    assert outcome.decision.verdict.antivirus.value == "not_scanned"
    assert statuses(outcome)["AV_NOT_SCANNED"]["limit"] == "max_ratio"
    # accepted and quarantined by default, never delivered
    assert (outcome.reply_code, outcome.decision.action.kind.value) == (250, "quarantine")


def test_zip_bomb_is_not_scanned_by_total_size(tmp_path: Path) -> None:
    bomb = zipped("zeros.bin", bytes(4 * 1024 * 1024))
    config = "[antivirus.limits]\nmax_total_size = 1000000\nmax_ratio = 100000\n"
    outcome = process_with(tmp_path, build_message(attachments=[("bomb.zip", bomb)]), config)
    assert outcome.decision.verdict.antivirus.value == "not_scanned"
    assert statuses(outcome)["AV_NOT_SCANNED"]["limit"] == "max_total_size"


def test_deeply_nested_archive_is_not_scanned_by_depth(tmp_path: Path) -> None:
    data = EICAR
    for level in range(12):
        data = zipped(f"level{level}.zip" if level else "e.com", data)
    outcome = process_with(
        tmp_path,
        build_message(attachments=[("deep.zip", data)]),
        "[antivirus.limits]\nmax_depth = 5\n",
    )
    verdict = outcome.decision.verdict
    assert verdict.antivirus.value == "not_scanned"
    assert statuses(outcome)["AV_NOT_SCANNED"]["limit"] == "max_depth"


def test_too_many_members(tmp_path: Path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(30):
            archive.writestr(f"f{i}.txt", f"file {i}\n")
    config = "[antivirus.limits]\nmax_members = 10\n"
    outcome = process_with(
        tmp_path, build_message(attachments=[("many.zip", out.getvalue())]), config
    )
    assert statuses(outcome)["AV_NOT_SCANNED"]["limit"] == "max_members"


def test_time_limit_is_reported_by_name(tmp_path: Path) -> None:
    config = "[antivirus.limits]\nmax_seconds = 0.000001\n"
    raw = build_message(attachments=[("a.zip", zipped("a.txt", b"hello"))])
    outcome = process_with(tmp_path, raw, config)
    assert statuses(outcome)["AV_NOT_SCANNED"]["limit"] == "max_seconds"


def test_infected_wins_over_a_limit_hit_later(tmp_path: Path) -> None:
    raw = build_message(
        attachments=[("eicar.com", EICAR), ("bomb.zip", zipped("z", bytes(32 * 1024 * 1024)))]
    )
    outcome = process_with(tmp_path, raw, "")
    assert outcome.decision.verdict.antivirus.value == "infected"
    assert "AV_NOT_SCANNED" in statuses(outcome)


def test_encrypted_zip(tmp_path: Path) -> None:
    ensure_packages("zip")
    work = tmp_path / "z"
    work.mkdir()
    (work / "secret.txt").write_bytes(b"nothing to see\n")
    subprocess.run(
        [shutil.which("zip") or "zip", "-q", "-P", "pw", "enc.zip", "secret.txt"],
        cwd=work,
        check=True,
    )
    raw = build_message(attachments=[("enc.zip", (work / "enc.zip").read_bytes())])
    outcome = process_with(tmp_path, raw, "")
    assert outcome.decision.verdict.antivirus.value == "encrypted"
    assert statuses(outcome)["AV_ENCRYPTED"]["object"] == "enc.zip/secret.txt"


def test_encrypted_7z(tmp_path: Path) -> None:
    raw = build_message(attachments=[("enc.7z", sevenzipped("a.txt", b"hello", password="pw"))])
    outcome = process_with(tmp_path, raw, "")
    assert outcome.decision.verdict.antivirus.value == "encrypted"


def test_corrupted_zip_and_gzip(tmp_path: Path) -> None:
    good = zipped("a.txt", b"some text that compresses " * 50)
    # flip bytes inside the compressed data: the CRC (or inflate) fails
    broken = bytearray(good)
    for i in range(40, 60):
        broken[i] ^= 0xFF
    truncated_gz = gzip.compress(b"x" * 5000)[:-20]
    raw = build_message(attachments=[("a.zip", bytes(broken)), ("b.gz", truncated_gz)])
    outcome = process_with(tmp_path, raw, "")
    assert outcome.decision.verdict.antivirus.value == "corrupted"
    corrupted = [d["object"] for code, _, d in av_findings(outcome) if code == "AV_CORRUPTED"]
    assert sorted(corrupted) == ["a.zip", "b.gz"]


# -- clean mail ---------------------------------------------------------------------------------


def clean_messages() -> Iterator[tuple[str, bytes]]:
    root = corpus_dir()
    labels = root / "spam" / "LABELS.csv"
    need(labels.is_file(), f"spam corpus labels not found at {labels}")
    with labels.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["label"] == "ham":
                yield row["path"], (root / "spam" / row["path"]).read_bytes()
    mime = root / "mime"
    need(mime.is_dir(), f"MIME corpus not found at {mime}")
    for path in sorted(mime.rglob("*")):
        if path.is_file() and path.suffix in (".eml", ".raw", ".txt", ""):
            yield str(path.relative_to(root)), path.read_bytes()


def test_no_detection_on_ham_and_clean_mime_corpora(gateway: Run) -> None:
    seen = 0
    detected = []
    for name, raw in clean_messages():
        seen += 1
        outcome = gateway.process(raw)
        verdict = outcome.decision.verdict
        if verdict.antivirus.value == "infected":
            detected.append((name, verdict.virus_names))
    assert seen > 50
    assert detected == []


# -- actions -------------------------------------------------------------------------------------


def rule_actions(**actions: str) -> str:
    lines = "".join(f'{key} = "{value}"\n' for key, value in actions.items())
    return f'[[rules]]\nname = "default"\n[rules.actions]\n{lines}'


def backups(home: Path) -> list[tuple[BackupEntry, bytes]]:
    """What the gateway's backup store holds, oldest first (read as the web interface does)."""
    store = BackupStore(home / "backup")
    return [(entry, store.get(entry.id)) for entry in reversed(store.list())]


def test_remove_infected_attachment_delivers_the_rest_with_notice_and_backup(
    tmp_path: Path,
) -> None:
    report = b"%PDF-1.4 quarterly report, nothing wrong with it\n" * 20
    raw = build_message(
        subject="report",
        body="Please find the files attached.\n",
        attachments=[("report.pdf", report), ("eicar.com", EICAR), ("notes.txt", b"notes\n")],
    )
    home = tmp_path / "home"
    run = Run(home, rule_actions(infected="remove"))
    try:
        outcome = run.process(raw)
        delivered = run.runner.delivered()
    finally:
        run.close()
    assert outcome.reply_code == 250
    assert outcome.decision.verdict.antivirus.value == "infected"
    assert outcome.event is not None and outcome.event.action.value == "deliver"
    assert len(delivered) == 1
    message = message_from_bytes(delivered[0], policy=default)
    assert message["Subject"] == "report"
    assert message["X-Mailwarden-Virus"] == f"infected ({EICAR_NAME})"
    # the notice part has no file name and takes the removed part's place
    names = [part.get_filename() for part in message.iter_attachments()]
    assert names == ["report.pdf", None, "notes.txt"]
    attachments = {
        part.get_filename(): part.get_content()
        for part in message.iter_attachments()
        if part.get_filename()
    }
    assert attachments == {"report.pdf": report, "notes.txt": b"notes\n"}
    texts = [p.get_content() for p in message.walk() if p.get_content_type() == "text/plain"]
    assert texts[0].strip() == "Please find the files attached."
    # the kept parts travel byte for byte as received
    for part in parse(raw).leaves():
        if part.filename != "eicar.com":
            assert raw[part.header_start : part.body_end] in delivered[0]
    notice = next(p for p in message.walk() if p["X-Mailwarden-Removed"])
    text = notice.get_content()
    assert '"eicar.com" was removed' in text and EICAR_NAME in text
    assert EICAR not in delivered[0]
    # the gateway's backup holds the message as received, and the notice names it
    kept = backups(home)
    assert [body for _, body in kept] == [raw]
    entry = kept[0][0]
    assert entry.id == outcome.decision.action.backup_id and entry.id in text
    assert entry.reason == "infected" and entry.subject == "report"
    body_file = BackupStore(home / "backup").blobs.path_of(entry.sha256)
    assert body_file.stat().st_mode & 0o777 == 0o600


def test_remove_inside_an_attached_message_keeps_the_outer_message(tmp_path: Path) -> None:
    inner = build_message(subject="inner", attachments=[("eicar.com", EICAR), ("a.txt", b"a\n")])
    raw = attached_message(inner)
    run = Run(tmp_path / "home", rule_actions(infected="remove"))
    try:
        outcome = run.process(raw)
        delivered = run.runner.delivered()
    finally:
        run.close()
    assert outcome.reply_code == 250 and len(delivered) == 1
    message = message_from_bytes(delivered[0], policy=default)
    attached = next(p for p in message.walk() if p.get_content_type() == "message/rfc822")
    inner_message = attached.get_content()
    assert inner_message["Subject"] == "inner"
    assert [p.get_filename() for p in inner_message.iter_attachments()] == [None, "a.txt"]
    assert b"X-Mailwarden-Removed: yes" in delivered[0]


def test_remove_falls_back_to_quarantine_when_the_part_cannot_be_cut_out(tmp_path: Path) -> None:
    # a single-part message: the infected part is the message itself
    raw = single_part(EICAR + b"\n", "7bit")
    home = tmp_path / "home"
    run = Run(home, rule_actions(infected="remove"))
    try:
        outcome = run.process(raw)
        delivered = run.runner.delivered()
    finally:
        run.close()
    assert outcome.decision.action.kind.value == "quarantine"
    assert delivered == []
    assert len(list((home / "quarantine" / "held").iterdir())) == 1


def test_tag_subject_with_backup(tmp_path: Path) -> None:
    raw = build_message(subject="archive", attachments=[("enc.7z", sevenzipped("a", b"a", "pw"))])
    home = tmp_path / "home"
    run = Run(home, rule_actions(encrypted="tag"))
    try:
        outcome = run.process(raw)
        delivered = run.runner.delivered()
    finally:
        run.close()
    assert outcome.decision.verdict.antivirus.value == "encrypted"
    message = message_from_bytes(delivered[0], policy=default)
    assert message["Subject"] == "[encrypted] archive"
    assert message["X-Mailwarden-Virus"] == "encrypted"
    assert [p.get_filename() for p in message.iter_attachments()] == ["enc.7z"]
    assert [body for _, body in backups(home)] == [raw]


def test_reject_keeps_a_backup_and_deliver_does_not(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = Run(home)
    try:
        infected = build_message(attachments=[("eicar.com", EICAR)])
        assert run.process(infected).reply_code == 550
        assert run.process(build_message()).reply_code == 250
    finally:
        run.close()
    assert [body for _, body in backups(home)] == [infected]


def test_backups_off_in_the_rule_keep_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = Run(home, rule_actions(infected="reject") + "backup = false\n")
    try:
        outcome = run.process(build_message(attachments=[("eicar.com", EICAR)]))
    finally:
        run.close()
    assert outcome.reply_code == 550 and outcome.decision.action.backup_id is None
    assert backups(home) == []


def test_a_dry_run_names_a_backup_but_keeps_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run = Run(home, rule_actions(infected="remove"))
    try:
        decision = run.scan(build_message(attachments=[("eicar.com", EICAR), ("a.txt", b"a")]))
    finally:
        run.close()
    assert decision.action.backup_id is not None
    assert decision.action.replace_message is not None
    assert decision.action.backup_id.encode() in decision.action.replace_message
    assert backups(home) == []


def test_a_backup_that_cannot_be_written_refuses_for_now_and_changes_nothing(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    run = Run(home, rule_actions(infected="remove"))
    try:
        # The store's body folder is a file: no copy can be written.
        bodies = home / "backup" / "bodies"
        shutil.rmtree(bodies, ignore_errors=True)
        bodies.parent.mkdir(parents=True, exist_ok=True)
        bodies.write_text("not a folder")
        with pytest.raises(OSError):
            run.process(build_message(attachments=[("eicar.com", EICAR), ("a.txt", b"a")]))
        delivered = run.runner.delivered()
    finally:
        run.close()
    assert delivered == []


class Rewriter:
    """A plugin answering mailwarden_action: rewrites clean mail, asks to remove otherwise."""

    @hookimpl
    def mailwarden_action(self, ctx: ScanContext, verdict: Verdict, action: Action) -> Action:
        if b"remove me" in ctx.raw:
            return msgspec.structs.replace(action, remove_parts=[1])
        changed = ctx.raw.replace(b"lower case", b"UPPER CASE")
        return msgspec.structs.replace(action, replace_message=changed, subject_tag="[seen]")


def test_hook_mailwarden_action(tmp_path: Path) -> None:
    plugins = build_plugin_manager(entry_points=False, extra={"rewriter": Rewriter})
    cfg = parse_config("", plugins.config_schemas())
    cfg.gateway.home = str(tmp_path)
    runner = GatewayRunner(Gateway(cfg, plugins=plugins)).start()
    try:
        done = runner.process(build_message(subject="s", body="in lower case\n"), ENVELOPE)
        held = runner.process(build_message(subject="s", body="remove me\n"), ENVELOPE)
        delivered = runner.delivered()
    finally:
        runner.stop()
    assert done.reply_code == 250 and len(delivered) == 1
    message = message_from_bytes(delivered[0], policy=default)
    assert message["Subject"] == "[seen] s"
    assert message.get_content().strip() == "in UPPER CASE"
    # parts to remove and nobody to cut them out: held, never delivered
    assert held.decision.action.kind.value == "quarantine"


# -- target types -------------------------------------------------------------------------------

# (ClamAV target type, the first bytes of an object of that type)
_TYPED = [
    (1, b"MZ" + bytes(58) + (64).to_bytes(4, "little") + b"PE\0\0"),
    (2, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"),
    (5, b"GIF89a"),
    (5, b"\x89PNG\r\n\x1a\n"),
    (5, b"\xff\xd8\xff\xe0"),
    (5, b"BM"),
    (6, b"\x7fELF"),
    (9, b"\xcf\xfa\xed\xfe"),
    (9, b"\xfe\xed\xfa\xce"),
    (10, b"junk before the marker %PDF-1.7"),
    (11, b"CWS\x0a"),
    (12, b"\xca\xfe\xba\xbe"),
]


@pytest.mark.parametrize(("target", "head"), _TYPED)
def test_a_typed_signature_matches_only_objects_of_its_type(
    tmp_path: Path, target: int, head: bytes
) -> None:
    from mailwarden_antivirus.signatures import load_signatures

    (tmp_path / "t.ndb").write_text(f"Test.Typed:{target}:*:{b'typedpayload'.hex()}\n")
    signatures = load_signatures([tmp_path], cache_dir=tmp_path / "cache")
    body = b"\n" + b"x" * 100 + b"typedpayload" + b"y" * 100
    assert signatures.scan_body(head + body) == ["Test.Typed"]
    # Text is not of its type, nor is the magic one byte in (a PDF's marker may be anywhere).
    assert signatures.scan_body(b"plain text " + body) == []
    assert signatures.scan_body(b"\x00" + head + body) == ([] if target != 10 else ["Test.Typed"])

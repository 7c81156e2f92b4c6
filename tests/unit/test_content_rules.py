"""Content rules as an admin sees them: names (inside archives too), double extensions, sizes."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from mailwarden.testing import scan
from mailwarden_sdk import ActionKind
from tests.conftest import make_message


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _rules(body: str) -> str:
    return f'[[rules]]\nname = "default"\n[rules.content]\n{body}'


def _content(decision) -> list[tuple[str, str]]:
    return [
        (f.code, f.details["object"]) for f in decision.verdict.findings if f.detector == "content"
    ]


def test_name_mask_catches_a_double_extension_inside_a_zip() -> None:
    archive = _zip({"docs/invoice.pdf.exe": b"MZ\x90\x00 not really", "readme.txt": b"hi"})
    raw = make_message(attachment=archive, filename="invoice.zip")
    decision = scan(raw, config=_rules('names = ["*.pdf.exe"]\n'))
    assert _content(decision) == [("CONTENT_NAME_BLOCKED", "invoice.zip/docs/invoice.pdf.exe")]
    assert decision.verdict.content == "blocked"
    assert decision.action.kind is ActionKind.REJECT
    assert decision.action.smtp_code == 550
    # The reply shown in docs/rules.md.
    assert (
        decision.action.smtp_text
        == "5.7.1 Message rejected by policy: blocked content (invoice.pdf.exe)"
    )


def test_double_extension_check_needs_no_mask_and_sees_nested_archives() -> None:
    inner = _zip({"photo.jpg.scr": b"payload"})
    outer = _zip({"inner.zip": inner})
    raw = make_message(attachment=outer, filename="holiday.zip")
    decision = scan(raw, config=_rules("double_extensions = true\n"))
    assert _content(decision) == [
        ("CONTENT_DOUBLE_EXTENSION", "holiday.zip/inner.zip/photo.jpg.scr")
    ]


def test_names_inside_tar_gz_are_checked() -> None:
    raw = make_message(attachment=_tgz({"run.js": b"WScript.Shell"}), filename="x.tgz")
    decision = scan(raw, config=_rules('names = ["*.JS"]\n'))
    assert _content(decision) == [("CONTENT_NAME_BLOCKED", "x.tgz/run.js")]


def test_a_harmless_name_and_a_plain_message_pass() -> None:
    archive = _zip({"report.pdf": b"%PDF-1.7", "notes.txt": b"text"})
    config = _rules('names = ["*.exe", "*.scr"]\ndouble_extensions = true\n')
    assert _content(scan(make_message(attachment=archive, filename="a.zip"), config=config)) == []
    decision = scan(make_message(body="no attachments at all\n"), config=config)
    assert _content(decision) == [] and decision.action.kind is ActionKind.DELIVER


def test_content_action_is_the_rules_own() -> None:
    raw = make_message(attachment=b"data", filename="tool.exe")
    decision = scan(raw, config=_rules('names = ["*.exe"]\naction = "quarantine"\n'))
    assert decision.action.kind is ActionKind.QUARANTINE
    assert ("X-Mailwarden-Content", "blocked (CONTENT_NAME_BLOCKED)") in decision.action.add_headers


def test_size_limits_per_attachment_and_per_message() -> None:
    raw = make_message(attachment=b"x" * 5000, filename="big.bin")
    decision = scan(raw, config=_rules("max_attachment_size = 4096\n"))
    assert _content(decision) == [("CONTENT_ATTACHMENT_TOO_LARGE", "big.bin")]
    decision = scan(raw, config=_rules("max_message_size = 1024\n"))
    assert [f.code for f in decision.verdict.findings if f.detector == "content"] == [
        "CONTENT_MESSAGE_TOO_LARGE"
    ]


def test_a_zip_bomb_listing_is_bounded_by_archive_members() -> None:
    archive = _zip({f"f{i}.exe": b"" for i in range(50)})
    raw = make_message(attachment=archive, filename="many.zip")
    decision = scan(raw, config=_rules('names = ["*.exe"]\narchive_members = 10\n'))
    assert len(_content(decision)) == 10


@pytest.mark.parametrize("garbage", [b"PK\x03\x04 truncated", b"\x1f\x8b\x08 not gzip", b""])
def test_corrupt_archives_are_judged_by_their_own_name_only(garbage: bytes) -> None:
    raw = make_message(attachment=garbage, filename="broken.zip")
    decision = scan(raw, config=_rules('names = ["*.exe"]\n'))
    assert _content(decision) == [] and decision.verdict.errors == []


def test_bad_content_rule_values_name_the_key() -> None:
    from mailwarden.config import parse_config
    from mailwarden.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        parse_config(_rules("archive_depth = 99\n"))
    assert "archive_depth" in str(error.value)
    with pytest.raises(ConfigError) as error:
        parse_config(_rules('types = ["pe", "exe"]\n'))
    assert "['exe']" in str(error.value) and "rules[0].content" in str(error.value)


def test_the_content_rules_sample_in_the_docs_is_valid_config() -> None:
    import re
    from pathlib import Path

    from mailwarden.config import parse_config

    text = (Path(__file__).parents[2] / "docs" / "rules.md").read_text()
    section = text.split("## Content rules", 1)[1]
    sample = re.search(r"```toml\n(.*?)```", section, re.S)
    assert sample is not None
    config = parse_config(sample.group(1))
    content = config.rules[0].content
    assert content.double_extensions and content.action == "quarantine"
    assert content.max_attachment_size == 25 * 1024 * 1024


# A minimal PE: "MZ", e_lfanew at 0x3C pointing to "PE\0\0".
PE = b"MZ" + b"\x90" * 58 + (64).to_bytes(4, "little") + b"PE\x00\x00" + b"\x4c\x01" + b"\x00" * 200


def test_an_executable_renamed_txt_is_caught_by_its_detected_type() -> None:
    from mailwarden_native import detect_type

    assert detect_type(PE) == "pe"
    raw = make_message(attachment=PE, filename="notes.txt")
    config = _rules('types = ["pe", "elf"]\nnames = ["*.exe"]\n')
    decision = scan(raw, config=config)
    assert _content(decision) == [("CONTENT_TYPE_BLOCKED", "notes.txt")]
    finding = next(f for f in decision.verdict.findings if f.detector == "content")
    assert finding.details["type"] == "pe"
    assert decision.action.kind is ActionKind.REJECT


def test_detected_types_are_checked_inside_archives_and_text_passes() -> None:
    archive = _zip({"readme.txt": PE, "real.txt": b"just text\n"})
    raw = make_message(attachment=archive, filename="files.zip")
    decision = scan(raw, config=_rules('types = ["pe"]\n'))
    assert _content(decision) == [("CONTENT_TYPE_BLOCKED", "files.zip/readme.txt")]


def _ambiguous(headers: str, body: str) -> bytes:
    text = "From: alice@example.org\nTo: bob@example.net\nSubject: two readings\n" + headers
    return (text + "\n" + body).replace("\n", "\r\n").encode()


# Structures mail clients read differently; no detector needed to see them.
AMBIGUOUS = {
    "DUPLICATE_CONTENT_TYPE": _ambiguous(
        "Content-Type: text/plain\nContent-Type: multipart/mixed; boundary=b\n",
        "--b\nContent-Type: text/plain\n\nhi\n--b--\n",
    ),
    "HEADER_NAME_JUNK": _ambiguous(
        "Content-Type(x): multipart/mixed; boundary=b\n",
        "--b\nContent-Type: text/plain\n\nhi\n--b--\n",
    ),
    "DUPLICATE_BOUNDARY": _ambiguous(
        'Content-Type: multipart/mixed; boundary="a"; boundary="b"\n',
        "--b\nContent-Type: text/plain\n\nhi\n--b--\n",
    ),
}


@pytest.mark.parametrize("flag", sorted(AMBIGUOUS))
def test_an_ambiguous_structure_is_a_finding_a_rule_can_refuse(flag: str) -> None:
    raw = AMBIGUOUS[flag]
    delivered = scan(raw)
    [finding] = [f for f in delivered.verdict.findings if f.code == "MIME_AMBIGUOUS"]
    assert flag in finding.details["flags"].split(",")
    assert finding.status == "malformed"
    # Every reading is scanned, so the default delivers; a rule may refuse the evasion itself.
    assert delivered.action.kind is ActionKind.DELIVER
    strict = scan(
        raw, config='[[rules]]\nname = "default"\n[rules.actions]\nmalformed = "reject"\n'
    )
    assert strict.action.kind is ActionKind.REJECT
    assert "ambiguous MIME structure" in strict.action.smtp_text


def test_a_plain_multipart_message_is_not_ambiguous() -> None:
    raw = make_message(attachment=b"plain bytes", filename="notes.txt")
    decision = scan(
        raw, config='[[rules]]\nname = "default"\n[rules.actions]\nmalformed = "reject"\n'
    )
    assert not [f for f in decision.verdict.findings if f.code == "MIME_AMBIGUOUS"]
    assert decision.action.kind is ActionKind.DELIVER

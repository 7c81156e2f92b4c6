"""DKIM keys and signing: key files private, records publishable, signatures verifiable."""

from __future__ import annotations

import base64
from pathlib import Path

import dkim as dkimpy
import pytest

from mailwarden.config import parse_config
from mailwarden.dkim import DkimSigner, keygen
from mailwarden.errors import ConfigError
from tests.conftest import make_message


def _signer(tmp_path: Path, domain: str, algorithm: str) -> tuple[DkimSigner, dict[str, str]]:
    key = tmp_path / f"{domain}.key"
    record = keygen(domain, "sel", key, "ed25519" if algorithm == "ed25519" else "rsa")
    config = parse_config(
        f'[gateway]\nhome = "{tmp_path}"\n'
        f'[[dkim.keys]]\ndomain = "{domain}"\nselector = "sel"\nkey_file = "{key}"\n'
    )
    return DkimSigner.from_config(config), {
        f"sel._domainkey.{domain}": "".join(record.split('"')[1::2])
    }


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_signed_message_verifies_and_tampering_breaks_it(tmp_path: Path, algorithm: str) -> None:
    signer, records = _signer(tmp_path, "example.org", algorithm)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode().rstrip("."))
        return value.encode() if value else None

    signed = signer.sign(make_message(sender="Alice <alice@example.org>"))
    assert signed.startswith(b"DKIM-Signature:")
    header = signed.split(b"\r\n\r\n", 1)[0].decode()
    assert ("a=ed25519-sha256" if algorithm == "ed25519" else "a=rsa-sha256") in header
    assert "c=relaxed/relaxed" in header
    assert dkimpy.verify(signed, dnsfunc=dnsfunc)
    assert not dkimpy.verify(signed.replace(b"Just a clean", b"Just a dirty"), dnsfunc=dnsfunc)
    # From is signed one more time than present: a second From added later breaks it.
    assert not dkimpy.verify(b"From: mallory@evil.test\r\n" + signed, dnsfunc=dnsfunc)


def test_mail_from_other_domains_passes_unsigned(tmp_path: Path) -> None:
    signer, _ = _signer(tmp_path, "example.org", "rsa")
    message = make_message(sender="someone@example.com")
    assert signer.sign(message) == message


def test_key_files_are_0600_never_overwritten_and_too_open_keys_refused(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    record = keygen("example.org", "s1", key, "ed25519")
    assert key.stat().st_mode & 0o777 == 0o600
    seed = key.read_bytes().strip()
    assert seed.decode() not in record and len(base64.b64decode(seed)) == 32
    assert record.startswith("s1._domainkey.example.org. IN TXT")
    assert "k=ed25519" in record
    with pytest.raises(ConfigError):
        keygen("example.org", "s1", key)
    key.chmod(0o644)
    config = parse_config(
        f'[[dkim.keys]]\ndomain = "example.org"\nselector = "s1"\nkey_file = "{key}"\n'
    )
    with pytest.raises(ConfigError, match="chmod 600"):
        DkimSigner.from_config(config)


def test_rsa_record_is_split_into_txt_strings_of_at_most_255(tmp_path: Path) -> None:
    record = keygen("example.org", "big", tmp_path / "r.key", "rsa", 2048)
    strings = record.split('"')[1::2]
    assert len(strings) > 1 and all(len(s) <= 255 for s in strings)
    assert "".join(strings).startswith("v=DKIM1; k=rsa; p=MII")
    assert b"PRIVATE" in (tmp_path / "r.key").read_bytes() and "PRIVATE" not in record

"""LDAPS and StartTLS to a real slapd, with the server certificate checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden.config import load_config
from mailwarden.directory.service import open_directory
from tests.services.slapd import Slapd, directory_section, running_slapd

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    with running_slapd(tls=True) as server:
        yield server


def _lookup(tmp_path: Path, section: str) -> tuple[str | None, str | None]:
    config = tmp_path / "mailwarden.toml"
    config.write_text(section)
    directory = open_directory(load_config(config), fill_empty=False)
    assert directory is not None
    try:
        result = directory.lookup("a.smith@example.test")
    finally:
        directory.close()
    return (result.entry.cn if result.entry else None), result.error


def test_ldaps_with_the_servers_ca_file(slapd: Slapd, tmp_path: Path) -> None:
    assert slapd.tls_url is not None
    section = directory_section(slapd, ca_file=str(slapd.ca_file))
    section = section.replace(slapd.url, slapd.tls_url)
    assert _lookup(tmp_path, section) == ("Alice Smith", None)


def test_start_tls_with_the_servers_ca_file(slapd: Slapd, tmp_path: Path) -> None:
    section = directory_section(slapd, start_tls=True, ca_file=str(slapd.ca_file))
    assert _lookup(tmp_path, section) == ("Alice Smith", None)


def test_an_unknown_certificate_is_refused_unless_verify_is_off(
    slapd: Slapd, tmp_path: Path
) -> None:
    # The self-signed certificate is not among the system CAs.
    cn, error = _lookup(tmp_path, directory_section(slapd, start_tls=True))
    assert cn is None and error is not None and "cannot bind" in error
    section = directory_section(slapd, start_tls=True, verify=False)
    assert _lookup(tmp_path, section) == ("Alice Smith", None)

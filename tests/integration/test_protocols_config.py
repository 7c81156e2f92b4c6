"""``[clamd]``, ``[spamd]``, ``[http_scan]``: bad values named with key and line; clients
outside ``trusted_networks`` get each protocol's refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwarden.config import parse_config
from mailwarden.errors import ConfigError
from tests.integration.protocols_serve import exchange, serve_protocols


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[clamd]\nenabled = true\nport = 0\n", "<config>:3: [clamd.port]"),
        ("[spamd]\n\nmax_size = -1\n", "<config>:3: [spamd.max_size]"),
        ('[http_scan]\ntrusted_networks = ["10.0.0.0/8",\n "a.b/x"]\n', "<config>:2:"),
        ('[http_scan]\ntrusted_networks = ["10.0.0.0/33"]\n', "[http_scan] trusted_networks"),
        ("[clamd]\nallow_tell = true\n", "<config>:2: [clamd.allow_tell]"),
    ],
)
def test_bad_values_name_key_and_line(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    assert where in str(error.value)


def test_the_listeners_are_off_by_default_on_loopback() -> None:
    cfg = parse_config("")
    for section in (cfg.clamd, cfg.spamd, cfg.http_scan):
        assert section.enabled is False
        assert section.listen == "127.0.0.1"
    assert cfg.spamd.allow_tell is False


@pytest.mark.integration
def test_untrusted_clients_are_refused(tmp_path: Path) -> None:
    # serve_protocols writes the three sections; only 10/8 may use them here.
    trusted = 'trusted_networks = ["10.0.0.0/8"]\n'
    with serve_protocols(tmp_path, trusted_networks=trusted) as served:
        assert exchange(served.clamd, b"zPING\0") == b"Access denied. ERROR\n"
        spamd = exchange(served.spamd, b"PING SPAMC/1.5\r\n\r\n")
        assert spamd == b"SPAMD/1.5 69 EX_UNAVAILABLE\r\n\r\n"
        http = exchange(served.http, b"GET /ping HTTP/1.0\r\n\r\n")
        assert http.startswith(b"HTTP/1.1 403 Forbidden\r\n")

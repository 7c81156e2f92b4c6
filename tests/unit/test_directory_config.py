"""`[directory]` settings are checked when the config is loaded, naming the key and line."""

from __future__ import annotations

import pytest

from mailwarden.config import parse_config
from mailwarden.errors import ConfigError


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('url = "http://dc1"\nbase_dn = "dc=x"', "ldap:// or ldaps://"),
        ('url = "ldap://dc1"', "base_dn is required"),
        ('url = "ldaps://dc1"\nstart_tls = true\nbase_dn = "dc=x"', "TLS already"),
        ('url = "ldap://dc1"\nbase_dn = "dc=x"\nrefresh_interval = 0', "Expected `float` >"),
    ],
)
def test_bad_directory_settings_are_named(body: str, message: str) -> None:
    text = f'[gateway]\nhostname = "h"\n\n[directory]\nenabled = true\n{body}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="mw.toml")
    assert message in str(caught.value)
    assert caught.value.key is not None and caught.value.key.startswith("directory")
    assert caught.value.line is not None and caught.value.line >= 4


def test_a_disabled_directory_needs_nothing() -> None:
    config = parse_config('[directory]\nurl = "whatever"\n')
    assert not config.directory.enabled

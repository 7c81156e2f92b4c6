"""RFC 5321 mailboxes as the SMTP listener checks them in MAIL FROM and RCPT TO."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.ingress.mailbox import split_path, valid_mailbox

_ATOM = st.text(alphabet="abcXYZ019!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=8)
_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_ATOM, min_size=1, max_size=3),
    st.lists(_LABEL, min_size=1, max_size=4),
    st.sampled_from(["", "\r", "\n", " ", "\x00", "<", ","]),
    st.integers(min_value=0, max_value=20),
)
def test_mailbox_grammar(atoms: list[str], labels: list[str], junk: str, where: int) -> None:
    address = ".".join(atoms) + "@" + ".".join(labels)
    assert valid_mailbox(address)
    if junk:
        spoiled = address[:where] + junk + address[where:]
        assert not valid_mailbox(spoiled)


@pytest.mark.parametrize(
    ("path", "valid"),
    [
        ("user@example.org", True),
        ('"john doe"@example.org', True),
        ("user@[192.0.2.1]", True),
        ("user@[IPv6:2001:db8::1]", True),
        ("@relay.example,@b.example:user@example.org", True),  # source route, ignored
        ("jörg@bücher.example", True),  # SMTPUTF8
        ("not-an-address", False),
        ("not an address", False),
        ("a..b@example.org", False),
        ("a@b@example.org", False),
        ("user@-example.org", False),
        ("user@[300.1.1.1]", False),
        ("x" * 65 + "@example.org", False),
    ],
)
def test_mailbox_examples(path: str, valid: bool) -> None:
    assert valid_mailbox(path) is valid


def test_split_path_honours_quotes_and_parameters() -> None:
    assert split_path("<a@b.example> SIZE=10") == ("a@b.example", "SIZE=10")
    assert split_path('<"x>y"@b.example>') == ('"x>y"@b.example', "")
    assert split_path("<a@b.example>junk") is None
    assert split_path("<a@b.example") is None
    assert split_path("bare@b.example") == ("bare@b.example", "")

"""MAIL FROM and RCPT TO arguments: the listener's quick reading of the common form gives what
aiosmtpd's own (the email package's header parser) gives, address and parameters alike."""

from __future__ import annotations

from typing import Any

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.ingress.smtp import GatewaySMTP, _Limits

_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_atoms = st.text(_ATEXT + ".", min_size=0, max_size=12)
_labels = st.text("abZ09-.", min_size=0, max_size=12)
_rests = st.sampled_from(
    ["", " ", "  SIZE=1024", "SIZE=1", " BODY=8BITMIME x", "\t(note) A", "(c)"]
)
_noise = st.text('<>@ \t()"\\[]:,;é', max_size=3)


def _read(read: Any, server: SMTP, argument: str) -> Any:
    try:
        return read(server, argument)
    except Exception as exc:  # aiosmtpd's parser raises IndexError on some arguments
        return type(exc)


def _server(limit: int) -> GatewaySMTP:
    server = GatewaySMTP(object(), limits=_Limits(1, 1))
    server.local_part_limit = limit
    return server


@settings(max_examples=3000, deadline=None)
@given(
    lead=st.sampled_from(["", " ", "\t", "  "]),
    local=_atoms,
    domain=_labels,
    rest=_rests,
    noise=_noise,
    where=st.integers(0, 40),
    limit=st.sampled_from([0, 3, 64]),
)
def test_a_path_reads_as_aiosmtpd_reads_it(
    lead: str, local: str, domain: str, rest: str, noise: str, where: int, limit: int
) -> None:
    argument = f"{lead}<{local}@{domain}>{rest}"
    if noise:
        # Now and then something the quick reading must leave to the header parser.
        argument = argument[:where] + noise + argument[where:]
    server = _server(limit)
    assert _read(GatewaySMTP._getaddr, server, argument) == _read(SMTP._getaddr, server, argument)


def test_the_usual_arguments_read_as_before() -> None:
    server = _server(0)
    for argument, expected in (
        ("<alice@example.org>", ("alice@example.org", "")),
        (
            " <a.b+c@mx-1.example.net> SIZE=1024 BODY=8BITMIME",
            ("a.b+c@mx-1.example.net", "SIZE=1024 BODY=8BITMIME"),
        ),
        ("<a@b> (comment) SIZE=1", ("a@b", "SIZE=1")),
        ("<a@b.>", (None, None)),
        ("<@relay.example:a@b>", ("a@b", "")),
        ("", ("", "")),
    ):
        assert server._getaddr(argument) == expected == SMTP._getaddr(server, argument)
    assert _server(3)._getaddr("<abcd@example.org>") == (None, None)

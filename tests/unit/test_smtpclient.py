"""The relay client's reply reader: whole SMTP replies out of bytes cut anywhere."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailwarden.delivery.smtpclient import MAX_REPLY, ReplyReader, SMTPClientError

_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
_reply = st.tuples(st.integers(200, 599), st.lists(_text, min_size=1, max_size=4), st.booleans())


def _wire(code: int, lines: list[str], crlf: bool) -> bytes:
    end = "\r\n" if crlf else "\n"
    marks = ["-"] * (len(lines) - 1) + [" "]
    return "".join(f"{code}{m}{line}{end}" for m, line in zip(marks, lines, strict=True)).encode()


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_reply, min_size=1, max_size=8), st.data())
def test_any_cut_of_pipelined_replies_gives_each_reply_once_in_order(
    replies: list[tuple[int, list[str], bool]], data: st.DataObject
) -> None:
    # The replies to RSET, MAIL and every RCPT of a pipelined batch arrive as the network
    # cuts them: one segment, one per reply, or mid-line.
    wire = b"".join(_wire(*r) for r in replies)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(wire) - 1)), max_size=10)))
    reader = ReplyReader()
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        reader.feed(wire[start:end])
    expected = [(code, "\n".join(x.strip(" \t") for x in lines)) for code, lines, _ in replies]
    assert list(reader.replies) == expected
    assert not reader.pending


def test_an_unfinished_reply_waits_for_its_last_line() -> None:
    reader = ReplyReader()
    reader.feed(b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE")
    assert not reader.replies and reader.pending
    reader.feed(b" 1000\r\n")
    assert list(reader.replies) == [(250, "mx.example\nPIPELINING\nSIZE 1000")]


@pytest.mark.parametrize("line", [b"hello\r\n", b"25 ok\r\n", b"250xok\r\n"])
def test_a_broken_reply_line_is_an_error(line: bytes) -> None:
    with pytest.raises(SMTPClientError):
        ReplyReader().feed(line)


def test_an_endless_reply_is_an_error() -> None:
    reader = ReplyReader()
    with pytest.raises(SMTPClientError):
        for _ in range(MAX_REPLY // 10 + 2):
            reader.feed(b"250-xxxxx\r\n")
    with pytest.raises(SMTPClientError):
        ReplyReader().feed(b"250 " + b"x" * MAX_REPLY)

"""The milter server over a real 127.0.0.1 socket, driven by a test MTA speaking milter v6."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.ingress.milter import (
    ABORT,
    BODY,
    BODYEOB,
    HEADER,
    MACRO,
    MACROS,
    MAIL,
    QUIT,
    RCPT,
    WANTED_ACTIONS,
    WANTED_PROTOCOL,
    GatewayMilter,
    MilterHandler,
    MilterMessage,
    MilterProtocolError,
    MilterResult,
    MilterServer,
    decode_command,
    encode_packet,
    encode_replycode,
    next_packet,
    split_packets,
)
from mailwarden.testing import _gateway
from mailwarden_native import milter_headers
from tests.conftest import EICAR, make_message
from tests.milter_mta import NO_REPLIES, MemoryTransport, Mta
from tests.services.dns_zone import running_zone

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

RULES = """
[[rules]]
name = "hold"
recipients = ["@hold.test"]
[rules.actions]
infected = "quarantine"
[[rules]]
name = "tag"
recipients = ["@tag.test"]
[rules.actions]
spam = "deliver"
[[rules]]
name = "default"
"""


def run_with_server(
    tmp_path: Path,
    body: Callable[[int, Any], Awaitable[None]],
    *,
    handler: MilterHandler | None = None,
    config: str = RULES,
    **server_options: Any,
) -> None:
    """Start a gateway and a milter server on a free port, run ``body(port, gateway)``."""

    async def main() -> None:
        gateway = _gateway(None, True, config, tmp_path / "home")
        async with gateway:
            server = MilterServer(handler or GatewayMilter(gateway), **server_options)
            listener = await server.start("127.0.0.1", 0)
            port = listener.sockets[0].getsockname()[1]
            try:
                async with asyncio.timeout(60):
                    await body(port, gateway)
                # Let the server see every client's EOF before the loop goes away.
                for _ in range(100):
                    if not server.connections:
                        break
                    await asyncio.sleep(0.02)
            finally:
                listener.close()
                await listener.wait_closed()

    asyncio.run(main())


def test_option_negotiation_takes_what_the_mta_offers(tmp_path: Path) -> None:
    async def body(port: int, _gw: Any) -> None:
        mta = await Mta.connect(port)
        version, actions, protocol = await mta.optneg()
        assert (version, actions, protocol) == (6, WANTED_ACTIONS, WANTED_PROTOCOL)
        assert mta.macro_lists == MACROS
        await mta.close()
        # An older MTA offering less gets a subset, never more than it offered.
        mta = await Mta.connect(port)
        version, actions, protocol = await mta.optneg(version=4, actions=0x3F, protocol=0x7F)
        assert (version, actions & ~0x3F, protocol & ~0x7F) == (4, 0, 0)
        assert mta.macro_lists == {}  # no SETSYMLIST offered, so no lists
        await mta.close()

    run_with_server(tmp_path, body)


@pytest.mark.parametrize("protocol", [0, 0x1FFFFF], ids=["reply-every-stage", "no-replies"])
def test_clean_message_is_accepted_with_status_headers(tmp_path: Path, protocol: int) -> None:
    async def body(port: int, gateway: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg(protocol=protocol)
        assert (mta.protocol & NO_REPLIES) == (NO_REPLIES if protocol else 0)
        await mta.session_start()
        answer = await mta.message(make_message(), queue_id="QID42")
        assert answer.final == "a"
        added = dict(answer.headers_added())
        assert added["X-Mailwarden-Virus"] == "clean"
        assert added["X-Mailwarden-Spam"].startswith("no,")
        # A second message on the same connection, as Postfix sends for one SMTP session.
        again = await mta.message(make_message(subject="second"))
        assert again.final == "a"
        mta.send("Q")
        await mta.close()
        events = {e.queue_id: e for e in gateway.events.search()}
        assert [e.ingress for e in events.values()] == ["milter", "milter"]
        first = events["QID42"]
        assert first.client_address == "192.0.2.7" and first.helo == "client.test"
        assert first.rcpt_to == ["bob@example.net"] and first.mail_from == "alice@example.org"

    run_with_server(tmp_path, body)


def test_eicar_is_rejected_with_our_code_and_text(tmp_path: Path) -> None:
    async def body(port: int, _gw: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg()
        await mta.session_start()
        answer = await mta.message(make_message(attachment=EICAR, filename="eicar.com"))
        assert answer.final == "y"
        assert answer.reply_text.startswith("550 5.7.1 Message rejected by policy: infected")
        assert answer.changes == []
        await mta.close()

    run_with_server(tmp_path, body)


def test_spam_under_a_tagging_rule_is_delivered_tagged(tmp_path: Path) -> None:
    async def body(port: int, _gw: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg()
        await mta.session_start()
        raw = make_message(body=GTUBE + "\n")
        answer = await mta.message(raw, recipients=("carol@tag.test",))
        assert answer.final == "a"
        assert dict(answer.headers_added())["X-Mailwarden-Spam"].startswith("yes, status=spam")
        rejected = await mta.message(raw, recipients=("bob@example.net",))
        assert rejected.final == "y" and rejected.reply_text.startswith("550 5.7.1")
        await mta.close()

    run_with_server(tmp_path, body)


def test_quarantine_stores_and_discards_or_holds_at_the_mta(tmp_path: Path) -> None:
    raw = make_message(attachment=EICAR, filename="eicar.com")

    async def store(port: int, gateway: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg()
        await mta.session_start()
        answer = await mta.message(raw, recipients=("dan@hold.test",))
        assert answer.final == "d"
        held = gateway.quarantine.messages()
        assert len(held) == 1 and b"X-Mailwarden-Virus: infected" in held[0].read_bytes()
        _, envelope = gateway.quarantine.original(held[0].name)
        assert envelope.rcpt_to == ["dan@hold.test"]
        await mta.close()

    run_with_server(tmp_path / "a", store)

    async def hold(port: int, _gw: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg()
        await mta.session_start()
        answer = await mta.message(raw, recipients=("dan@hold.test",))
        assert answer.final == "a"
        codes = [c for c, _ in answer.changes]
        assert "q" in codes and codes[-1] == "q"
        assert answer.changes[-1][1].startswith(b"mailwarden infected ")
        await mta.close()

    async def with_hold(port: int, gateway: Any) -> None:
        gateway_milter = GatewayMilter(gateway, quarantine="hold")
        server = MilterServer(gateway_milter)
        listener = await server.start("127.0.0.1", 0)
        try:
            await hold(listener.sockets[0].getsockname()[1], gateway)
        finally:
            listener.close()

    run_with_server(tmp_path / "b", with_hold)


def test_spam_the_spam_quarantine_keeps_is_not_held_at_the_mta_too(tmp_path: Path) -> None:
    """``[milter] quarantine = "hold"`` with a rule that quarantines spam and ``[antispam]
    quarantine``: the message was kept twice (the MTA's hold queue and the spam quarantine).
    The one copy is the spam quarantine's (its digest, self-service and learning); the MTA
    discards it. A message no plugin keeps (a virus) is still held at the MTA."""
    with running_zone({}) as dns:
        config = (
            f"[antispam]\ndns_servers = ['127.0.0.1']\ndns_port = {dns.port}\n"
            "dns_timeout = 0.5\nquarantine = ['spam']\n"
            + RULES.replace(
                'infected = "quarantine"', 'infected = "quarantine"\nspam = "quarantine"'
            )
        )

        async def body(port: int, gateway: Any) -> None:
            server = MilterServer(GatewayMilter(gateway, quarantine="hold"))
            listener = await server.start("127.0.0.1", 0)
            try:
                mta = await Mta.connect(listener.sockets[0].getsockname()[1])
                await mta.optneg()
                await mta.session_start()
                answer = await mta.message(
                    make_message(body=GTUBE + "\n"), recipients=("dan@hold.test",)
                )
                assert answer.final == "d"
                assert "q" not in [c for c, _ in answer.changes]
                virus = make_message(attachment=EICAR, filename="eicar.com")
                answer = await mta.message(virus, recipients=("dan@hold.test",))
                assert answer.final == "a" and [c for c, _ in answer.changes][-1] == "q"
                await mta.close()
            finally:
                listener.close()
            [spam] = gateway.plugin_quarantines()["spam"][1].search()
            assert spam.recipients == ["dan@hold.test"]
            assert gateway.quarantine.held() == []

        run_with_server(tmp_path, body, config=config)


def test_recipients_under_different_rules_are_split_with_delrcpt(tmp_path: Path) -> None:
    async def body(port: int, gateway: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg()
        await mta.session_start()
        raw = make_message(attachment=EICAR, filename="eicar.com")
        # default rejects, hold quarantines: the message is accepted, both are taken out.
        answer = await mta.message(raw, recipients=("bob@example.net", "dan@hold.test"))
        assert answer.final == "d"
        # A clean message to both: accepted for both, nobody deleted.
        clean = await mta.message(make_message(), recipients=("bob@example.net", "dan@hold.test"))
        assert clean.final == "a" and not [c for c, _ in clean.changes if c == "-"]
        # Spam to a tagging rule and the default: the default's recipient is deleted.
        spam = make_message(body=GTUBE + "\n")
        split = await mta.message(spam, recipients=("carol@tag.test", "bob@example.net"))
        assert split.final == "a"
        assert ("-", b"<bob@example.net>\0") in split.changes
        await mta.close()

    run_with_server(tmp_path, body)


class EveryChange:
    """A handler using every end-of-message change, and the ways to answer."""

    def __init__(self) -> None:
        self.seen: list[MilterMessage] = []

    async def end_of_message(self, message: MilterMessage) -> MilterResult:
        self.seen.append(message)
        subject = dict(message.headers).get("Subject", "").strip()
        if subject == "tempfail":
            return MilterResult("tempfail", 451, "4.7.1 Try 100% later")
        if subject == "plain reject":
            return MilterResult("reject")
        if subject == "slow":
            await asyncio.sleep(0.35)
        if subject == "boom":
            raise RuntimeError("handler bug")
        return MilterResult(
            "accept",
            add_headers=[("X-Added", "yes")],
            insert_headers=[(0, "X-First", "1")],
            change_headers=[("Subject", 1, "[tag] " + subject), ("X-Drop", 1, "")],
            body=b"replaced\r\n" * 10000,
            sender="<new@example.org>",
            add_recipients=["<extra@example.net>"],
            delete_recipients=["<bob@example.net>"],
            quarantine="look at this",
        )


def test_every_change_is_encoded_in_order_and_replies_carry_codes(tmp_path: Path) -> None:
    handler = EveryChange()

    async def body(port: int, _gw: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg()
        await mta.session_start()
        raw = make_message(subject="hello").replace(b"Subject:", b"X-Drop: x\r\nSubject:")
        answer = await mta.message(raw, chunk=100)
        codes = [c for c, _ in answer.changes]
        assert codes[:4] == ["h", "i", "m", "m"]
        assert answer.changes[1][1] == struct.pack("!I", 0) + b"X-First\0 1\0"
        assert answer.changes[2][1] == struct.pack("!I", 1) + b"Subject\0 [tag] hello\0"
        assert answer.changes[3][1] == struct.pack("!I", 1) + b"X-Drop\0\0"
        bodies = [d for c, d in answer.changes if c == "b"]
        assert len(bodies) == 2 and b"".join(bodies) == b"replaced\r\n" * 10000
        assert codes[-4:] == ["e", "+", "-", "q"] and answer.final == "a"
        # The reassembled message is what was sent, whatever the chunking.
        assert handler.seen[0].raw() == raw
        assert handler.seen[0].queue_id == "ABC123"
        temp = await mta.message(make_message(subject="tempfail"))
        assert (temp.final, temp.reply_text) == ("y", "451 4.7.1 Try 100%% later")
        plain = await mta.message(make_message(subject="plain reject"))
        assert plain.final == "r"
        slow = await mta.message(make_message(subject="slow"))
        assert slow.final == "a" and slow.progress >= 2
        boom = await mta.message(make_message(subject="boom"))
        assert (boom.final, boom.reply_text[:3]) == ("y", "451")
        await mta.close()

    run_with_server(tmp_path, body, handler=handler, progress_interval=0.1)


def test_a_silent_mta_is_closed_after_the_timeout_but_a_long_scan_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(port: int, _gw: Any) -> None:
        # The decision (0.35 s) outlasts the idle timeout (0.2 s): the MTA is waiting on us,
        # so the connection stays and the answer arrives.
        mta = await Mta.connect(port)
        await mta.optneg()
        await mta.session_start()
        slow = await mta.message(make_message(subject="slow"))
        assert slow.final == "a"
        # Then the MTA sends nothing: the server closes the connection.
        began = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(mta.reader.read(), 5) == b""
        assert asyncio.get_running_loop().time() - began < 2
        await mta.close()

    with caplog.at_level(logging.WARNING, logger="mailwarden.ingress.milter"):
        run_with_server(tmp_path, body, handler=EveryChange(), timeout=0.2, progress_interval=10)
    assert any("sent nothing for 0.2 s" in r.getMessage() for r in caplog.records)


def test_changes_the_mta_did_not_allow_are_left_out(tmp_path: Path) -> None:
    async def body(port: int, _gw: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg(actions=0x1)  # only adding headers
        await mta.session_start()
        answer = await mta.message(make_message(subject="hello"))
        # Adding and inserting headers both need SMFIF_ADDHDRS; nothing else was allowed.
        assert [c for c, _ in answer.changes] == ["h", "i"] and answer.final == "a"
        await mta.close()

    run_with_server(tmp_path, body, handler=EveryChange())


def test_size_limit_gives_552_and_keeps_no_more(tmp_path: Path) -> None:
    handler = EveryChange()

    async def body(port: int, _gw: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg()
        await mta.session_start()
        big = make_message(body="x" * 70 + "\n" * 1) * 1 + b"y" * 5000
        answer = await mta.message(big, chunk=512)
        assert (answer.final, answer.reply_text[:9]) == ("y", "552 5.3.4")
        assert handler.seen == []
        ok = await mta.message(make_message())
        assert ok.final == "a"
        await mta.close()

    run_with_server(tmp_path, body, handler=handler, max_message_size=2000)


def test_abort_and_quit_nc_start_over(tmp_path: Path) -> None:
    handler = EveryChange()

    async def body(port: int, _gw: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg(protocol=0)
        await mta.session_start()
        mta.send("M", b"<x@example.org>\0")
        assert await mta.expect(0) == "c"
        mta.send("R", b"<y@example.org>\0")
        assert await mta.expect(0) == "c"
        mta.send("A")  # RSET: no reply, the transaction is forgotten
        mta.send("U", b"NOOP\0")
        assert await mta.expect(0) == "c"
        first = await mta.message(make_message(subject="one"))
        assert first.final == "a"
        assert [r for r, _ in handler.seen[0].recipients] == ["<bob@example.net>"]
        mta.send("K")  # new SMTP session on the same connection
        await mta.session_start(client="198.51.100.9", helo="other.test")
        second = await mta.message(make_message(subject="two"))
        assert second.final == "a"
        assert handler.seen[1].helo == "other.test"
        assert handler.seen[1].macros["client_addr"] == "198.51.100.9"
        await mta.close()

    run_with_server(tmp_path, body, handler=handler)


async def _still_serves(port: int) -> None:
    """The server is still there for the next connection and accepts a message."""
    mta = await Mta.connect(port)
    await mta.optneg()
    await mta.session_start()
    assert (await mta.message(make_message())).final == "a"
    await mta.close()


@pytest.mark.parametrize(
    "packet",
    [
        struct.pack("!I", 0),  # no command byte
        struct.pack("!I", 1 << 30) + b"B",  # absurd length
        encode_packet("Z", b"junk"),  # unknown command
        encode_packet("O", b"\0\0\0\6"),  # truncated OPTNEG
        encode_packet("H", b"helo"),  # OPTNEG first, and no NUL
        encode_packet("B", b"a body chunk") + encode_packet("Q"),  # OPTNEG first
    ],
    ids=["zero", "huge", "unknown", "short-optneg", "before-optneg", "body-before-optneg"],
)
def test_malformed_packets_close_cleanly_with_a_log_line(
    tmp_path: Path, packet: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    handler = EveryChange()

    async def body(port: int, _gw: Any) -> None:
        mta = await Mta.connect(port)
        mta.writer.write(packet)
        await mta.writer.drain()
        assert await mta.reader.read() == b""  # closed by the server, nothing sent
        await mta.close()
        await _still_serves(port)

    with caplog.at_level(logging.WARNING, logger="mailwarden.ingress.milter"):
        run_with_server(tmp_path, body, handler=handler)
    assert any("closing the connection" in r.getMessage() for r in caplog.records)
    # Closed by the milter itself, not by asyncio after an exception escaped the protocol.
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_many_concurrent_connections(tmp_path: Path) -> None:
    async def body(port: int, _gw: Any) -> None:
        async def one(n: int) -> str:
            mta = await Mta.connect(port)
            await mta.optneg()
            await mta.session_start()
            answer = await mta.message(make_message(subject=f"n{n}"))
            mta.send("Q")
            await mta.close()
            return answer.final

        finals = await asyncio.gather(*(one(n) for n in range(100)))
        assert finals == ["a"] * 100

    run_with_server(tmp_path, body)


def test_connections_over_the_limit_are_closed(tmp_path: Path) -> None:
    async def body(port: int, _gw: Any) -> None:
        first = await Mta.connect(port)
        await first.optneg()
        second = await Mta.connect(port)
        assert await second.reader.read() == b""
        await second.close()
        await first.close()

    run_with_server(tmp_path, body, handler=EveryChange(), max_connections=1)


def test_replycode_rejects_bad_codes_and_escapes_percent() -> None:
    assert encode_replycode(550, "5.7.1 no\r\n100%") == encode_packet("y", b"550 5.7.1 no 100%%\0")
    with pytest.raises(ValueError):
        encode_replycode(250, "ok")


# -- the decoder under hypothesis ---------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_fails_other_than_with_a_protocol_error(data: bytes) -> None:
    try:
        packets, rest = split_packets(data, limit=256)
    except MilterProtocolError:
        return
    assert len(rest) < len(data) + 1
    for code, payload in packets:
        try:
            decode_command(code, payload)
        except MilterProtocolError:
            pass


_strings = st.text(
    alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20
)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just("L"), _strings, _strings),
        st.tuples(st.just("M"), _strings, _strings),
        st.tuples(st.just("B"), st.binary(max_size=100), st.just("")),
    ),
    st.integers(min_value=0, max_value=3),
)
def test_encoded_commands_decode_to_themselves(case: tuple[Any, ...], split_at: int) -> None:
    code, first, second = case
    if code == "B":
        data = first
    else:
        data = first.encode() + b"\0" + second.encode() + b"\0"
    wire = encode_packet(code, data) * 2
    packets, rest = split_packets(wire[: len(wire) - split_at])
    assert len(packets) == (2 if split_at == 0 else 1) and len(rest) == (
        0 if split_at == 0 else len(wire) // 2 - split_at
    )
    decoded = decode_command(*packets[0])
    if code == "B":
        assert decoded.data == first
    else:
        assert decoded.args == (first, second)


_raw_strings = st.binary(max_size=30).map(lambda b: b.replace(b"\0", b""))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from("LMRH"), st.lists(_raw_strings, min_size=1, max_size=4))
def test_eight_bit_strings_decode_to_their_exact_bytes(code: str, parts: list[bytes]) -> None:
    """Header values and addresses in any 8-bit bytes (not UTF-8, cut multi-byte sequences
    next to the NULs) come back byte for byte, as the reassembled message needs them."""
    if code == "L":
        parts = [*parts, b"v"][:2]
    wire = encode_packet(code, b"".join(p + b"\0" for p in parts))
    (packet,), _rest = split_packets(wire)
    decoded = decode_command(*packet)
    assert [a.encode("utf-8", "surrogateescape") for a in decoded.args] == parts


# Packets as a hostile or broken MTA may send them: header packets of any data (one, two or
# three strings, unterminated, empty), other commands, and lengths of 0 or past the limit.
_header_data = st.one_of(
    st.tuples(st.lists(_raw_strings, max_size=3), st.booleans()).map(
        lambda t: b"".join(x + b"\0" for x in t[0])[: None if t[1] else -1]
    ),
    st.lists(_raw_strings, min_size=2, max_size=2).map(lambda p: b"".join(x + b"\0" for x in p)),
    st.binary(max_size=12),
)
_wire_packets = st.lists(
    st.one_of(
        st.tuples(st.just(HEADER), _header_data).map(lambda p: encode_packet(*p)),
        st.tuples(st.sampled_from([BODY, MACRO, "Q", "\xff"]), st.binary(max_size=8)).map(
            lambda p: encode_packet(*p)
        ),
        st.sampled_from([b"\0\0\0\0L", struct.pack("!I", 300) + b"L", b"\0\0\0"]),
    ),
    max_size=8,
)


@settings(max_examples=500, deadline=None)
@given(
    _wire_packets,
    st.one_of(
        st.integers(0, 8).map(lambda n: ("packets", n)),
        st.integers(0, 60).map(lambda n: ("bytes", n)),
    ),
    st.integers(min_value=0, max_value=7),
)
def test_native_header_run_takes_what_the_codec_decodes(
    packets: list[bytes], skip: tuple[str, int], cut: int
) -> None:
    """The server hands the header packets in a row to the C core in one call: on any
    stream, cut anywhere and read from any offset, it takes exactly the header packets the
    codec decodes, up to the first the codec would not (another command, an incomplete
    or malformed one, a bad length), and their names and values are the codec's."""
    wire = bytearray(b"".join(packets))
    wire = wire[: max(0, len(wire) - cut)]
    # From the start of a packet (as the server calls it), or from any byte.
    by, n = skip
    start = min(sum(map(len, packets[:n])) if by == "packets" else n, len(wire))
    expected: list[tuple[str, ...]] = []
    offset = start
    while True:
        try:
            packet = next_packet(wire, offset, 256)
        except MilterProtocolError:
            break
        if packet is None or packet[0] != HEADER:
            break
        try:
            expected.append(decode_command(HEADER, packet[1]).args)
        except MilterProtocolError:
            break
        offset = packet[2]
    rest = bytes(wire[offset:])
    end, parts = milter_headers(wire, start, 256)
    assert end == offset
    assert list(zip(parts[::2], parts[1::2], strict=True)) == expected
    # What the run did not take is left as it was, for the codec to read next.
    assert wire[end:] == rest


def test_xtext_round_trip_for_xforward_values() -> None:
    from mailwarden.ingress.content_filter import xtext_decode, xtext_encode

    for value in ["mail.example.org", "a b=c+d", "IPV6:2001:db8::1", "[UNAVAILABLE]", "é"]:
        encoded = xtext_encode(value)
        assert " " not in encoded and "=" not in encoded
        assert xtext_decode(encoded).encode("latin-1").decode("utf-8") == value


@pytest.mark.parametrize(
    "packets",
    [
        [("C", {"huge": "x" * 100_000})],
        # New names each time, each packet under the per-packet cap: 5 x 60 KB.
        [("C", {f"name{n}": "x" * 60_000}) for n in range(5)],
    ],
    ids=["one-large-packet", "many-new-names"],
)
def test_macro_packets_are_bounded_and_close_the_connection(
    tmp_path: Path, packets: list[tuple[str, dict[str, str]]], caplog: pytest.LogCaptureFixture
) -> None:
    async def body(port: int, _gw: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg()
        for stage, values in packets:
            mta.macro(stage, **values)
        # Closed without a reply: Postfix then applies milter_default_action (tempfail). A
        # reset is a close too (the server drops what it did not read).
        try:
            await mta.writer.drain()
            assert await mta.reader.read() == b""
        except ConnectionResetError:
            pass
        await mta.close()
        await _still_serves(port)

    with caplog.at_level(logging.WARNING, logger="mailwarden.ingress.milter"):
        run_with_server(tmp_path, body, handler=EveryChange())
    assert any("macro" in r.getMessage().lower() for r in caplog.records)


def test_macros_resent_for_every_message_stay_within_the_cap(tmp_path: Path) -> None:
    async def body(port: int, _gw: Any) -> None:
        mta = await Mta.connect(port)
        await mta.optneg()
        await mta.session_start()
        for n in range(30):
            mta.macro("C", client_addr="192.0.2.7", client_name="c" * 2000)
            answer = await mta.message(make_message(subject=f"n{n}"))
            assert answer.final == "a"
        await mta.close()

    run_with_server(tmp_path, body, handler=EveryChange())


# -- the server's reader under hypothesis: however the MTA's writes are cut ----------------------


class _Keep:
    """A handler that keeps every message it is given and accepts it."""

    def __init__(self) -> None:
        self.messages: list[MilterMessage] = []

    async def end_of_message(self, message: MilterMessage) -> MilterResult:
        self.messages.append(message)
        return MilterResult("accept")


def _feed(wire: bytes, cuts: list[int]) -> tuple[list[MilterMessage], bytes, bool]:
    """``wire`` into a server connection in pieces cut at ``cuts``: the messages its handler
    got, what it wrote back, and whether it closed the connection."""

    async def main() -> tuple[list[MilterMessage], bytes, bool]:
        handler = _Keep()
        connection = MilterServer(handler)._connection()
        transport = MemoryTransport()
        connection.connection_made(transport)
        bounds = [0, *sorted(set(cuts)), len(wire)]
        for start, end in itertools.pairwise(bounds):
            connection.data_received(wire[start:end])
            while connection.deciding is not None:
                await connection.deciding
        connection.connection_lost(None)
        return handler.messages, bytes(transport.written), transport.closed

    return asyncio.run(main())


_header_names = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-", min_size=1
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(_header_names, _strings), max_size=6),
    st.binary(max_size=3000),
    st.lists(st.text(alphabet="abcxyz", min_size=1, max_size=8), min_size=1, max_size=3),
    st.integers(min_value=1, max_value=1500),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
    st.integers(min_value=1, max_value=2),
)
def test_any_cut_of_the_stream_gives_the_same_messages_as_the_codec(
    headers: list[tuple[str, str]],
    body: bytes,
    recipients: list[str],
    chunk: int,
    cuts: list[int],
    messages: int,
) -> None:
    """The server decodes packets where they lie in its read buffer; cut anywhere, with body
    chunks of any size, it must see what :func:`decode_command` reads from the same packets."""

    def cstrings(*values: str) -> bytes:
        return b"".join(v.encode("utf-8", "surrogateescape") + b"\0" for v in values)

    packets = [("O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF))]
    packets.append((MACRO, b"C" + cstrings("{client_addr}", "192.0.2.7", "j", "mx")))
    packets.append(("C", b"client.test\0" + b"4" + struct.pack("!H", 25) + b"192.0.2.7\0"))
    packets.append(("H", cstrings("client.test")))
    message = [(MACRO, b"M" + cstrings("{mail_addr}", "a@example.org"))]
    message.append((MAIL, cstrings("<a@example.org>", "SIZE=10")))
    message += [(RCPT, cstrings(f"<{r}@example.net>")) for r in recipients]
    message += [(HEADER, cstrings(name, value)) for name, value in headers]
    message += [(BODY, body[i : i + chunk]) for i in range(0, len(body), chunk)]
    for n in range(messages):
        packets += [*message, (MACRO, b"E" + cstrings("i", f"Q{n}")), (BODYEOB, b"")]
    packets += [(ABORT, b""), (QUIT, b"")]
    wire = b"".join(encode_packet(code, data) for code, data in packets)

    got, written, closed = _feed(wire, [c for c in cuts if c < len(wire)])
    whole, written_whole, _ = _feed(wire, [])
    assert closed and written == written_whole
    assert [m.raw() for m in got] == [m.raw() for m in whole]
    assert len(got) == messages
    expected = [decode_command(code, data) for code, data in message]
    for m in got:
        assert m.headers == [tuple(c.args) for c in expected if c.code == HEADER]
        assert bytes(m.body) == b"".join(c.data for c in expected if c.code == BODY)
        assert m.recipients == [(c.args[0], []) for c in expected if c.code == RCPT]
        assert m.sender == "<a@example.org>" and m.sender_args == ["SIZE=10"]
        assert m.macros["client_addr"] == "192.0.2.7" and m.address == "192.0.2.7"
        assert m.helo == "client.test" and m.family == "4" and m.port == 25
    assert [m.macros["i"] for m in got] == [f"Q{n}" for n in range(messages)]


# -- reassembly and the connection's bookkeeping ------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_header_names, st.text(alphabet="ab \r\n\t\x80é", max_size=12)), max_size=5),
    st.binary(max_size=60).map(lambda b: b.translate(bytes.maketrans(b"\x00\x01\x02", b"\r\n\n"))),
    st.booleans(),
)
def test_the_reassembled_message_ends_every_line_in_crlf(
    headers: list[tuple[str, str]], body: bytes, leading_space: bool
) -> None:
    """What the handler scans: each header as ``name: value`` (or ``name:value`` with the
    value's own leading space), a blank line, the body, and every LF with its CR before it
    (Postfix joins folded header lines with a bare LF), nothing else changed."""
    message = MilterMessage(headers=headers, body=bytearray(body), leading_space=leading_space)
    sep = ":" if leading_space else ": "
    head = "".join(f"{n}{sep}{v}\r\n" for n, v in headers).encode("utf-8", "surrogateescape")
    raw = message.raw()
    assert raw.replace(b"\r\n", b"\n") == (head + b"\r\n" + body).replace(b"\r\n", b"\n")
    assert raw.count(b"\n") == raw.count(b"\r\n")
    assert raw.endswith(body) or b"\n" in body


_macro_names = st.sampled_from(["{a}", "{b}", "c", "{i}", "{mail_addr}"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just(MACRO),
                st.sampled_from("CHMREK"),
                st.lists(st.tuples(_macro_names, st.text(alphabet="xyz", max_size=30)), max_size=3),
            ),
            st.tuples(st.sampled_from([MAIL, BODYEOB, ABORT, "K", "C"]), st.just(""), st.just([])),
        ),
        max_size=25,
    )
)
def test_the_macro_cap_counts_what_is_kept_however_macros_are_replaced(
    steps: list[tuple[str, str, list[tuple[str, str]]]],
) -> None:
    """The cap on kept macro bytes is checked against running counts; after any sequence of
    MACRO packets (new names, replaced values, shorter and longer), messages, aborts and
    QUIT_NC they equal the bytes the connection's and the message's macros hold."""

    def cstrings(*values: str) -> bytes:
        return b"".join(v.encode() + b"\0" for v in values)

    async def main() -> None:
        connection = MilterServer(_Keep())._connection()
        connection.connection_made(MemoryTransport())
        connection.data_received(encode_packet("O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF)))
        for code, stage, pairs in steps:
            if code == MACRO:
                data = stage.encode() + cstrings(*(x for pair in pairs for x in pair))
            elif code == MAIL:
                data = cstrings("<a@example.org>")
            elif code == "C":
                data = b"client.test\0" + b"4" + struct.pack("!H", 25) + b"192.0.2.7\0"
            else:
                data = b""
            connection.data_received(encode_packet(code, data))
            while connection.deciding is not None:
                await connection.deciding
            session = connection.session
            assert session is not None
            for macros, counted in (
                (session.connection.macros, session.connection_macro_bytes),
                (session.message.macros, session.message_macro_bytes),
            ):
                assert counted == sum(len(k) + len(v) for k, v in macros.items())

    asyncio.run(main())


class _PausingTransport(MemoryTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False


def test_what_the_mta_sends_while_a_message_is_decided_waits_in_bounds() -> None:
    """Reading goes on while a message is decided (the MTA sends nothing then, so there is
    nothing to pause for), but a peer that sends more than a packet's worth meanwhile is
    paused until the answer is out; what it sent is then handled, in order."""

    class Slow:
        def __init__(self) -> None:
            self.go = asyncio.Event()
            self.messages: list[MilterMessage] = []

        async def end_of_message(self, message: MilterMessage) -> MilterResult:
            await self.go.wait()
            self.messages.append(message)
            return MilterResult("accept")

    def message(n: int, body: bytes) -> bytes:
        return b"".join(
            [
                encode_packet(MAIL, b"<a@example.org>\0"),
                encode_packet(RCPT, b"<b@example.net>\0"),
                encode_packet(HEADER, b"Subject\0 n%d\0" % n),
                *(encode_packet(BODY, body[i : i + 65535]) for i in range(0, len(body), 65535)),
                encode_packet(BODYEOB),
            ]
        )

    async def main() -> None:
        handler = Slow()
        connection = MilterServer(handler)._connection()
        transport = _PausingTransport()
        connection.connection_made(transport)
        connection.data_received(encode_packet("O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF)))
        connection.data_received(message(0, b"first\r\n"))
        assert connection.deciding is not None and not transport.paused
        connection.data_received(message(1, b"x" * 600_000))
        assert not transport.paused  # a packet's worth is kept without pausing
        connection.data_received(message(2, b"y" * 600_000))
        assert transport.paused
        handler.go.set()
        for _ in range(100):
            if len(handler.messages) == 3 and connection.deciding is None:
                break
            await asyncio.sleep(0)
        assert not transport.paused and transport.pauses == 1
        assert [bytes(m.body)[:5] for m in handler.messages] == [b"first", b"xxxxx", b"yyyyy"]
        assert [len(m.body) for m in handler.messages] == [7, 600_000, 600_000]
        assert bytes(transport.written).count(encode_packet("a")) == 3

    asyncio.run(main())

"""The SMTP gateway listener (aiosmtpd), in front of mail servers and for ``make serve``.

The message is spooled (fsynced) and scanned during DATA and the reply reflects the decision,
so a rejected message is refused to the client instead of bounced later, and 250 is sent only
after the message is durable. The listener speaks ESMTP with SIZE, 8BITMIME, SMTPUTF8,
PIPELINING and STARTTLS, and an implicit-TLS port when ``[smtp] tls_port`` is set. Client
limits: connections in total and per client address (a full listener makes room for a new
address by closing an idle connection of the address holding the most), recipients per
message, message size, time without a byte from the client, and commands that make no
progress (NOOP, RSET, VRFY, HELP).

It is never an open relay (Postfix's ``smtpd_relay_restrictions`` as
``permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination``): a recipient in
``[gateway] local_domains`` is accepted from anyone, any other only from ``[smtp]
trusted_networks`` or after AUTH, which is offered over TLS only and only when there are
accounts to check (the web interface's local accounts, the directory by LDAP bind). Envelope
addresses must be RFC 5321 mailboxes, HELO and AUTH names must not hold control characters
(they reach our ``Received:`` line), a line ending in a bare LF ends the session as with
Postfix's ``smtpd_forbid_bare_newline = reject`` (3.9; ``yes`` in 3.8.4), which stops SMTP
smuggling, and a message with more than ``hopcount_limit`` ``Received:`` lines is refused as a
loop. Clients in ``trusted_networks``
may send bare LFs, as Postfix's ``smtpd_forbid_bare_newline_exclusions = $mynetworks``; the end
of DATA is only ever ``<CR><LF>.<CR><LF>``, and what we relay gets CRLF line ends before it is
dot-stuffed, so a smuggled ``\\n.\\n`` reaches the next hop as ``..``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import ipaddress
import logging
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, AnyStr, cast

import aiosmtpd.smtp as _aiosmtpd_smtp
from aiosmtpd.proxy_protocol import ProxyData
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from mailwarden_sdk import Envelope

from ..greylist import in_networks
from ..pipeline import Gateway
from ..policy import direction_of
from ..tls import server_context
from ..workers import worker_count
from .connections import ConnectionLimits as _Limits
from .connections import envelope_sender as _sender
from .mailbox import split_path, valid_mailbox
from .tcp import listening_socket, stream_transport

if TYPE_CHECKING:
    from ..accounts import Accounts
    from ..config import Config

__all__ = [
    "GatewaySMTP",
    "SmtpHandler",
    "relay_warnings",
    "start_smtp_server",
    "start_smtp_servers",
]

log = logging.getLogger(__name__)


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# An angle-bracketed path of ASCII dot-atoms, the form nearly every client sends. The email
# package's header parser returns such a path unchanged (its atext has no ``=``, which could
# start an encoded word, and no specials), so it need not be run for it; anything else is.
_SIMPLE_ATOM = r"[A-Za-z0-9!#$%&'*+/^_`{|}~-]+"
_SIMPLE_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE_PATH_RE = re.compile(
    rf"[ \t]*<({_SIMPLE_ATOM}(?:\.{_SIMPLE_ATOM})*)@({_SIMPLE_LABEL}(?:\.{_SIMPLE_LABEL})*)>"
)


_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_aiosmtpd_sanitized_log = _aiosmtpd_smtp.sanitized_log


_aiosmtpd_log = _aiosmtpd_smtp.log


def _sanitized_log(func: Callable[..., None], msg: Any, *args: Any, **kw: Any) -> None:
    # aiosmtpd logs every command line twice (debug and info), matching each against its AUTH
    # pattern to hide passwords first, whether or not the level is on (it seldom is).
    logger = getattr(func, "__self__", None)
    if logger is _aiosmtpd_log and not _aiosmtpd_log.isEnabledFor(logging.INFO):
        return  # neither level is on (debug is below info): one cached look-up decides
    level = _LOG_LEVELS.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None:
        if not logger.isEnabledFor(level):
            return
    _aiosmtpd_sanitized_log(func, msg, *args, **kw)


_aiosmtpd_smtp.sanitized_log = _sanitized_log


class _BoundMethods(dict[str, Any]):
    """A connection's command table: its methods bound when looked up, not all at its start
    (a session uses five or six of some twenty)."""

    __slots__ = ("_owner",)

    def __init__(self, functions: dict[str, Any], owner: object) -> None:
        super().__init__(functions)
        self._owner = owner

    def get(self, key: str, default: Any = None) -> Any:
        function = dict.get(self, key)
        return default if function is None else function.__get__(self._owner)

    def __getitem__(self, key: str) -> Any:
        return dict.__getitem__(self, key).__get__(self._owner)

    def items(self) -> Any:
        return [(key, function.__get__(self._owner)) for key, function in dict.items(self)]


class _BoundAuth(dict[str, Any]):
    """A connection's AUTH mechanisms: aiosmtpd's own ones bound to it when looked up (only a
    session that authenticates does), the names as the template's for its EHLO reply."""

    __slots__ = ("_owner",)

    def __init__(self, mechanisms: dict[str, Any], owner: object) -> None:
        super().__init__(mechanisms)
        self._owner = owner

    def __getitem__(self, key: str) -> Any:
        mechanism = dict.__getitem__(self, key)
        if not mechanism.is_builtin:
            return mechanism
        return mechanism._replace(method=mechanism.method.__func__.__get__(self._owner))

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with connection limits, implicit-TLS awareness and the checks above.

    ``strict`` turns on what only the gateway listener does (the content filter's client is
    Postfix, which has checked its own clients): RFC 5321 addresses at MAIL and RCPT.
    ``forbid_bare_newline`` ends a session at a bare LF unless ``bare_newline_exempt(peer)``.
    NOOP, RSET, VRFY and HELP count against ``junk_command_limit`` (Postfix's
    smtpd_junk_command_limit) until a message is accepted. ``auth_offered`` says whether AUTH
    can succeed now; without it AUTH is never offered.
    """

    #: Whether replies to pipelined commands go out together (see :meth:`push`).
    cork_replies = True

    def __init__(
        self,
        *args: Any,
        limits: _Limits,
        implicit_tls: bool = False,
        strict: bool = False,
        forbid_bare_newline: bool = False,
        bare_newline_exempt: Callable[[Any], bool] | None = None,
        junk_command_limit: int = 100,
        auth_offered: Callable[[], bool] | None = None,
        template: GatewaySMTP | None = None,
        **kw: Any,
    ):
        if template is None:
            super().__init__(*args, **kw)
        else:
            self._init_like(template)
        self._limits = limits
        self._implicit_tls = implicit_tls
        if implicit_tls:
            # aiosmtpd knows TLS only from STARTTLS and would answer AUTH with 538 here.
            self._auth_require_tls = False
        self._strict = strict
        self._forbid_bare_newline = forbid_bare_newline
        self._forbid_bare_newline_configured = forbid_bare_newline
        self._proxied_peer: tuple[str, int] | None = None
        self._bare_newline_exempt = bare_newline_exempt or (lambda peer: False)
        # Until our greeting, what a balancer sends is its PROXY header: v2's signature holds
        # a bare LF by design ("\r\n\r\n\0\r\nQUIT\n"), which is no smuggling attempt.
        self._proxy_header_pending = False
        self._junk_left = junk_command_limit
        self._junk_limit = junk_command_limit
        self._auth_offered = auth_offered or (lambda: False)
        self._counted: str | None = None
        self._refused = False
        self._last_input = 0.0
        self._processing = False
        self._previous_cr = False
        self.auth_failures = 0
        self._continued: list[str] = []
        # Replies held back while the client's next command is already here (see push).
        self._corked: list[bytes] = []
        # When the session last finished a command (None while one is being handled): the
        # listener closes the longest idle connection first when it must make room.
        self.idle_since: float | None = None

    def _init_like(self, template: GatewaySMTP) -> None:
        """aiosmtpd's ``__init__`` for one more connection like ``template`` (never connected).

        aiosmtpd builds its command, hook and AUTH tables with ``inspect.getmembers`` and
        ``dir`` on every connection (a fifth of a millisecond); they depend only on the class,
        the handler and the listener's options, so they are taken from the template and only
        the methods bound to the template are bound to this connection.
        """
        loop = template.loop
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        own = vars(self)
        kept = template.__dict__.get("_template_kept")
        if kept is None:
            # What the template has beyond what StreamReaderProtocol just set (the same names
            # on every connection): one dict merge per connection instead of a loop over ~70.
            functions = {c: m.__func__ for c, m in template._smtp_methods.items()}
            template.__dict__["_smtp_functions"] = functions
            kept = {k: v for k, v in vars(template).items() if k not in own}
            template.__dict__["_template_kept"] = kept
        own.update(kept)
        self._smtp_methods = _BoundMethods(kept["_smtp_functions"], self)
        self._auth_methods = _BoundAuth(template._auth_methods, self)

    @classmethod
    def factory(cls, *args: Any, **kw: Any) -> Callable[[], GatewaySMTP]:
        """A protocol factory for a listener: connections built like the first, cheaply."""
        template: GatewaySMTP | None = None

        def build() -> GatewaySMTP:
            nonlocal template
            if template is None:
                template = cls(*args, **kw)
            return cls(*args, template=template, **kw)

        return build

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and not self._refused:
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if isinstance(peer, tuple) else "local"
            if not self._limits.admit(address, self):
                # Said before any SMTP state exists: the client retries later, as with a busy MX.
                log.warning("refusing %s: connection limit reached", address)
                self._refused = True
                stream_transport(transport).write(
                    b"421 4.7.0 Too many connections, try again later\r\n"
                )
                transport.close()
                return
            self._counted = address
            self._proxy_header_pending = self._proxy_timeout is not None
            if self._forbid_bare_newline and self._bare_newline_exempt(peer):
                # As Postfix's smtpd_forbid_bare_newline_exclusions = $mynetworks: local
                # programs that write LF line ends keep working.
                self._forbid_bare_newline = False
        self._last_input = self.idle_since = self.loop.time()
        super().connection_made(transport)
        if self._proxied_peer is not None and self.session is not None:
            # STARTTLS starts a new session from the socket's peer, which is the balancer.
            # aiosmtpd types peer as a string; the socket gives (host, port) like this.
            self.session.peer = cast(Any, self._proxied_peer)
        if self._implicit_tls and self.session is not None and self.session.ssl is None:
            self.session.ssl = {"cipher": transport.get_extra_info("cipher")}

    def behind_proxy(self, peer: tuple[str, int]) -> bool:
        """Take ``peer`` (from a PROXY protocol header) as the client from now on: counted
        against the limits as itself, not as the balancer. False when its address is full."""
        address = str(peer[0])
        if self._counted is not None:
            self._limits.leave(self._counted, self)
            self._counted = None
        if not self._limits.admit(address, self):
            log.warning("refusing %s (behind a proxy): connection limit reached", address)
            return False
        self._counted = address
        self._proxied_peer = peer
        if self.session is not None:
            self.session.peer = cast(Any, peer)
        self._forbid_bare_newline = self._forbid_bare_newline_configured and not (
            self._bare_newline_exempt(peer)
        )
        return True

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._counted is not None:
            self._limits.leave(self._counted, self)
            self._counted = None
        super().connection_lost(error)

    def evict(self) -> None:
        """Close this idle connection to make room for another client address."""
        if self._counted is not None:
            self._limits.leave(self._counted, self)
            self._counted = None
        self._close_with(f"421 4.7.0 {self.hostname} Error: too many connections from you")

    def _close_with(self, reply: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            held = b"".join(self._corked)
            self._corked.clear()
            if reply or held:
                stream_transport(self.transport).write(
                    held + (reply.encode("ascii") + b"\r\n" if reply else b"")
                )
            self.transport.close()

    def eof_received(self) -> bool | None:
        if self._refused:
            return False
        super().eof_received()
        # aiosmtpd cancels the session on EOF but leaves the socket half open when that
        # happens before its greeting, which would hold a connection slot until the timeout.
        # Replies held back for commands already handled still go out first.
        self._close_with("")
        return False

    def data_received(self, data: bytes) -> None:
        # The timeout counts from the last byte received, so a slow transfer that keeps
        # sending is never cut (aiosmtpd counted from the last command, DATA included).
        self._last_input = self.loop.time()
        if (
            self._forbid_bare_newline
            and not self._proxy_header_pending
            and self._bare_newline(data)
        ):
            # Postfix's smtpd_forbid_bare_newline = reject: a line that ends in LF alone is how
            # SMTP smuggling hides a second message ("\n.\n" read as end of data elsewhere).
            log.warning("%s: bare <LF> received; disconnecting", self._counted)
            self._close_with(f"550 5.5.2 {self.hostname} Error: bare <LF> received")
            return
        super().data_received(data)

    def _bare_newline(self, data: bytes) -> bool:
        lf = data.count(b"\n")
        paired = data.count(b"\r\n") + (1 if self._previous_cr and data[:1] == b"\n" else 0)
        self._previous_cr = data[-1:] == b"\r"
        return lf != paired

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd cancels and re-arms the timer before every command. _timeout_cb measures
        # the silence from the last byte and re-arms itself, so a pending timer stays.
        handle = self._timeout_handle
        if duration is None and handle is not None and not handle.cancelled():
            return
        super()._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        idle = self.loop.time() - self._last_input
        if idle < self._timeout_duration or self._processing:
            self._timeout_handle = self.loop.call_later(
                max(self._timeout_duration - idle, 1.0), self._timeout_cb
            )
            return
        log.info("%s: no data for %.0f s; closing", self._counted, idle)
        self._close_with(f"421 4.4.2 {self.hostname} Error: timeout exceeded")

    async def push(self, status: AnyStr) -> None:
        # A multi-line reply (EHLO's) goes out in one write: aiosmtpd sends each line with its
        # own send(), eight system calls and as many segments for one EHLO. And so do the
        # replies to a client's pipelined commands (RFC 2920): a final reply is held back
        # while the next command line is already here, and goes out with the next reply that
        # is not, one write for the group. What the client must see before it goes on
        # (354, 334, 220: the greeting, STARTTLS's) and a reply that may come before a close
        # (_NEVER_HELD) are never held.
        self._proxy_header_pending = False
        if isinstance(status, str):
            if status[3:4] == "-":
                self._continued.append(status)
                return
            if self._continued:
                self._continued.append(status)
                status = "\r\n".join(self._continued)
                self._continued.clear()
            response = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            response = status
            if self._continued:
                text = response.decode("utf-8", "replace")
                self._continued.append(text)
                response = "\r\n".join(self._continued).encode("utf-8", "replace")
                self._continued.clear()
        if (
            self.cork_replies
            and response[:1] in (b"2", b"4", b"5")
            and response[:3] not in _NEVER_HELD
        ):
            buffer = getattr(self._reader, "_buffer", None)
            if buffer is not None and b"\n" in buffer and not self._reader.at_eof():
                self._corked.append(response + b"\r\n")
                return
        if self._corked:
            response = b"".join(self._corked) + response
            self._corked.clear()
        await super().push(response)
        self.idle_since = self.loop.time()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd runs every MAIL and RCPT argument through the email package's header
        # parser, a tenth of a millisecond each; the common form is taken apart here alike.
        simple = _SIMPLE_PATH_RE.match(arg)
        if simple is not None:
            rest = arg[simple.end() :].lstrip(" \t")
            local = simple.group(1)
            if not rest.startswith("(") and not (
                self.local_part_limit and len(local) > self.local_part_limit
            ):
                return f"{local}@{simple.group(2)}", rest
        return super()._getaddr(arg)

    async def _junk(self, command: str) -> bool:
        """Count a command that moves no mail; True when the session was ended for it."""
        self._junk_left -= 1
        if self._junk_left >= 0:
            return False
        log.warning(
            "%s: more than %d NOOP/RSET/VRFY/HELP (last %s)",
            self._counted,
            self._junk_limit,
            command,
        )
        await self.push(f"421 4.7.0 {self.hostname} Error: too many commands without mail")
        self._close_with("")
        return True

    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk("NOOP"):
            await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk("RSET"):
            await super().smtp_RSET(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk("VRFY"):
            await super().smtp_VRFY(arg)

    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk("HELP"):
            await super().smtp_HELP(arg)

    async def smtp_HELO(self, hostname: str) -> None:
        if await self._control_characters("HELO", hostname):
            return
        await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str) -> None:
        if await self._control_characters("EHLO", hostname):
            return
        await super().smtp_EHLO(hostname)

    async def _control_characters(self, command: str, argument: str | None) -> bool:
        # A CR in the HELO name would be written into our Received: line as a line break.
        if argument and _CONTROL_RE.search(argument):
            await self.push(f"501 5.5.2 Syntax: {command} hostname (no control characters)")
            return True
        return False

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None or (self.session is not None and self.session.ssl):
            await self.push("503 5.5.1 Error: TLS already active")
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        if not self._auth_offered():
            await self.push("503 5.5.1 Error: authentication not enabled")
            return
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self._strict and arg and self.session is not None and self.session.host_name:
            bad = _bad_path(arg, "FROM:", null_ok=True)
            if bad:
                await self.push("501 5.1.7 Bad sender address syntax")
                return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if (
            self._strict
            and arg
            and self.envelope is not None
            and self.envelope.mail_from
            and _bad_path(arg, "TO:", null_ok=False)
        ):
            await self.push("501 5.1.3 Bad recipient address syntax")
            return
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in blocks rather than line by line.

        aiosmtpd reads the message one line at a time in Python, which costs more CPU than the
        whole scan of a typical message with attachments. Here the stream is read up to each
        ``.<CRLF>`` (or in blocks of the reader's limit) and the end is recognised on our own
        buffer; dot-unstuffing is one ``replace``. The rest (checks before, the handler's reply
        after) is aiosmtpd's own behaviour.
        """
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.idle_since = None  # receiving a message: never the connection to close for room
        data = await self._read_data()
        if data is None:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = data
        self.envelope.original_content = data
        # The client waits for our reply while the message is scanned: that is not its silence.
        self._processing = True
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            self._processing = False
            self._last_input = self.loop.time()
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        # A message moved: the commands without progress are counted afresh.
        self._junk_left = self._junk_limit
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> bytes | None:
        """The message up to the lone dot, unstuffed; ``None`` if over the size limit."""
        buffer = bytearray()
        limit = self.data_size_limit
        too_much = False
        while True:
            try:
                buffer += await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:
                # No ".<CRLF>" within the reader's limit: take what is safely past it.
                buffer += await self._reader.readexactly(exc.consumed)
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            # The lone dot: ".<CRLF>" at the very start, or right after a CRLF.
            if len(buffer) == 3 and buffer == b".\r\n":
                return b""
            if buffer.endswith(b"\r\n.\r\n"):
                break
            if limit and len(buffer) > limit + 5:
                # Keep reading to the end so the client gets the 552 at the right time,
                # but do not keep the bytes (RFC 5321 4.5.3.1.10).
                too_much = True
                del buffer[:-5]
        if too_much:
            return None
        del buffer[-3:]  # the lone dot
        # Transparency (RFC 5321 4.5.2): a leading dot of each line was doubled by the client.
        if buffer.startswith(b"."):
            del buffer[0]
        return bytes(buffer.replace(b"\r\n.", b"\r\n"))


def _bad_path(argument: str, keyword: str, *, null_ok: bool) -> bool:
    """Whether MAIL's or RCPT's argument holds a path that is not an RFC 5321 mailbox.

    A missing keyword is left to aiosmtpd's own syntax reply. ``<>`` is the null sender
    (MAIL only) and ``<postmaster>`` without a domain is valid for RCPT (RFC 5321 4.1.1.3).
    """
    if argument[: len(keyword)].upper() != keyword:
        return False
    parsed = split_path(argument[len(keyword) :])
    if parsed is None:
        return True
    path = parsed[0]
    if not path:
        return not null_ok
    if not null_ok and path.lower() == "postmaster":
        return False
    return not valid_mailbox(path)


class SmtpHandler:
    """aiosmtpd handler that feeds the gateway, with relay control and SMTP AUTH."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        cfg = gateway.config.smtp
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in cfg.trusted_networks]
        self.proxies = [ipaddress.ip_network(n, strict=False) for n in cfg.proxy_trusted]
        # Client address -> in trusted_networks: asked four times per message (the bare-LF
        # exemption, RCPT's relay check, both policy steps), an address parse each time.
        self._trusted_known: tuple[list[Any], dict[str, bool]] = (self.trusted, {})
        self._accounts: Accounts | None = None
        # Failed AUTH per client address (recent times), across sessions.
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    # -- relay control -------------------------------------------------------------------------

    def trusted_client(self, session: Session) -> bool:
        """Whether the client may relay without AUTH: in ``trusted_networks`` (or a UNIX
        socket, which is this host)."""
        return self.trusted_peer(session.peer)

    def trusted_peer(self, peer: Any) -> bool:
        """Whether the socket peer ``peer`` is in ``trusted_networks``."""
        if not isinstance(peer, tuple):
            return True
        address = str(peer[0])
        networks, known = self._trusted_known
        if networks is not self.trusted:
            networks, known = self._trusted_known = (self.trusted, {})
        trusted = known.get(address)
        if trusted is None:
            if len(known) >= _TRUSTED_KNOWN_MAX:
                known.clear()
            trusted = known[address] = in_networks(address, networks)
        return trusted

    async def handle_PROXY(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, proxy: ProxyData
    ) -> bool:
        """A PROXY protocol header (``[smtp] proxy_protocol``): the client it names is the
        client from now on, if the connection comes from a ``proxy_trusted`` balancer."""
        peer: Any = session.peer
        if not (isinstance(peer, tuple) and in_networks(str(peer[0]), self.proxies)):
            log.warning("PROXY header from %s, which is not in [smtp] proxy_trusted", peer)
            return False
        if not proxy.valid:
            log.warning("invalid PROXY header from %s: %s", peer[0], proxy.error)
            return False
        if proxy.src_addr is None or proxy.src_port is None:
            # LOCAL (v2) or UNKNOWN (v1): the balancer's own connection, a health check.
            return True
        client = (str(proxy.src_addr), int(proxy.src_port))
        return not isinstance(server, GatewaySMTP) or server.behind_proxy(client)

    def local_recipient(self, address: str) -> bool:
        """Whether ``address`` is in ``[gateway] local_domains`` (or is ``postmaster``)."""
        if address.lower() == "postmaster":
            return True
        local = self.gateway.config.gateway.local_domains
        return bool(local) and direction_of("", address, local) != "outbound"

    # -- AUTH ----------------------------------------------------------------------------------

    def accounts(self) -> Accounts | None:
        """The web interface's local accounts, once the first one exists."""
        if self._accounts is None:
            directory = self.gateway.config.home / "web"
            # The web (or `mailwarden web password`) makes the first account.
            if not (directory / "users.json").exists():
                return None
            from ..accounts import local_accounts

            self._accounts = local_accounts(self.gateway.config)
        return self._accounts

    def auth_offered(self) -> bool:
        """Whether AUTH can succeed: enabled, and accounts or a directory to check against."""
        if not self.gateway.config.smtp.auth:
            return False
        if self.gateway.config.directory.enabled and self.gateway.directory is not None:
            return True
        accounts = self.accounts()
        return accounts is not None and bool(accounts.users())

    def check_password(self, name: str, password: str) -> bool:
        """A local account's password, else (for an address) a bind as that directory user."""
        accounts = self.accounts()
        if accounts is not None and accounts.local_login(name, password) is not None:
            return True
        directory = self.gateway.directory
        if directory is None or "@" not in name or not password:
            return False
        from ..directory.login import login_directory_user

        config = self.gateway.config
        found = login_directory_user(directory, config.web, config.directory, name, password)
        return found is not None and found[1].ok

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC 4616: ``authzid NUL authcid NUL password``, inline or after a 334."""
        blob = await _auth_blob(server, args[1] if len(args) > 1 else None, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot decode AUTH PLAIN")
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """The LOGIN mechanism: the name (inline or asked for), then the password."""
        login = await _auth_blob(server, args[1] if len(args) > 1 else None, "Username:")
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await _auth_blob(server, None, "Password:")
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._authenticate(server, login, password)

    async def _authenticate(self, server: SMTP, login: bytes, password: bytes) -> AuthResult:
        try:
            name, secret = login.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            name, secret = "", ""
        if not name or _CONTROL_RE.search(name):
            # The name is recorded with the message; it must not carry line breaks.
            await server.push("501 5.5.2 Bad AUTH name")
            return AuthResult(success=False, handled=True)
        client = _peer_address(server)
        if self._auth_blocked(client):
            # Not even checked: a guesser spread over many connections gets nowhere.
            await server.push("454 4.7.0 Error: too many failed AUTH attempts; try again later")
            return AuthResult(success=False, handled=True)
        if await asyncio.to_thread(self.check_password, name, secret):
            log.info("SMTP AUTH as %s", name)
            return AuthResult(success=True, auth_data=name)
        log.warning("SMTP AUTH failed for %s from %s", name, client)
        self._auth_failed(client)
        # As Postfix's smtpd_error_sleep_time: a guesser pays a second per try.
        await asyncio.sleep(1.0)
        if isinstance(server, GatewaySMTP):
            server.auth_failures += 1
            if server.auth_failures >= _AUTH_FAILURES:
                await server.push(f"421 4.7.0 {server.hostname} Error: too many AUTH failures")
                server._close_with("")
                return AuthResult(success=False, handled=True)
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Error: authentication failed"
        )

    def _auth_blocked(self, client: str) -> bool:
        failures = self._failures.get(client)
        if failures is None:
            return False
        horizon = time.monotonic() - _AUTH_WINDOW
        while failures and failures[0] < horizon:
            failures.pop(0)
        return len(failures) >= _AUTH_FAILURES_PER_ADDRESS

    def _auth_failed(self, client: str) -> None:
        self._failures.setdefault(client, []).append(time.monotonic())
        self._failures.move_to_end(client)
        # Bounded: the addresses failing longest ago are forgotten first.
        while len(self._failures) > _AUTH_ADDRESSES:
            self._failures.popitem(last=False)

    # -- SMTP hooks ----------------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # aiosmtpd reads commands from a buffer in order, so pipelined commands already work;
        # advertising it saves clients a round trip per command (RFC 2920).
        session.host_name = hostname
        # aiosmtpd offers AUTH after TLS whether or not it can succeed; offer it only when it
        # can, and only the mechanisms we check.
        kept = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        if session.ssl is not None and self.auth_offered():
            kept.append("250-AUTH PLAIN LOGIN")
        return [*kept, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not (
            self.local_recipient(address) or self.trusted_client(session) or session.authenticated
        ):
            peer: Any = session.peer
            log.warning(
                "relay refused: %s from %s to %s",
                envelope.mail_from,
                peer[0] if isinstance(peer, tuple) else peer,
                address,
            )
            return f"554 5.7.1 <{address}>: Relay access denied"
        limit = self.gateway.config.smtp.max_recipients
        if len(envelope.rcpt_tos) >= limit:
            return "452 4.5.3 Too many recipients"
        deferred = await self.gateway.policy_steps.at_recipient(
            _envelope(session, envelope), address, trusted=self.trusted_client(session)
        )
        if deferred is not None:
            return deferred
        # Recipients under different rules are all accepted here and split by rule after DATA
        # (Gateway.process), so the sender is not made to wait for a retry.
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        content = envelope.original_content or envelope.content or b""
        raw = content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
        hops = _received_count(raw) + 1
        if hops > self.gateway.config.smtp.hopcount_limit:
            log.warning("refusing a message with %d Received: lines (mail loop)", hops)
            return "554 5.4.6 Error: too many hops"
        ingress_envelope = _envelope(session, envelope)
        limited = await self.gateway.policy_steps.at_message(
            ingress_envelope, len(raw), trusted=self.trusted_client(session)
        )
        if limited is not None:
            return limited
        address = ingress_envelope.client_address
        tls = ingress_envelope.tls
        hostname = self.gateway.config.gateway.hostname
        helo = _CONTROL_RE.sub("", session.host_name or "") or "unknown"
        # Our own trace line (RFC 5321 4.4): receivers use it for loop detection and admins to
        # follow a message through hops.
        received = (
            f"Received: from {helo} ([{address or 'unix'}])\r\n"
            f"\tby {hostname} (mailwarden) with {_protocol(tls, session)};\r\n"
            f"\t{_date_now()}\r\n"
        ).encode("ascii", "replace")
        try:
            outcome = await self.gateway.process(received + raw, ingress_envelope, ingress="smtp")
        except Exception:
            log.exception("processing failed; answering 451 so the client keeps the message")
            return "451 4.3.0 Temporary processing failure; try again later"
        return outcome.reply


# Failed AUTH attempts per session before 421 (clients like smtplib try each mechanism in
# turn, two failures per wrong password).
_AUTH_FAILURES = 10
# Failed AUTH attempts per client address within _AUTH_WINDOW seconds, in any number of
# sessions, before AUTH from there is refused unchecked (454); addresses remembered at most.
_AUTH_FAILURES_PER_ADDRESS = 20
_AUTH_WINDOW = 900.0
_AUTH_ADDRESSES = 10_000
_TRUSTED_KNOWN_MAX = 4096
# Final replies push() never holds back: what a client waits for before it goes on (the
# greeting, STARTTLS's go-ahead) and what may be the last reply before a close (aiosmtpd
# closes the transport itself after its 502 for too many bogus commands and after the 500
# for a failed TLS set-up).
_NEVER_HELD = (b"220", b"221", b"421", b"500", b"502")
_RECEIVED_RE = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)


_date_cache: tuple[int, str] = (0, "")


def _date_now() -> str:
    """RFC 5322 date of this second in local time, made once a second (16 us each time)."""
    global _date_cache
    now = time.time()
    second = int(now)
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


def _peer_address(server: SMTP) -> str:
    peer: Any = server.session.peer if server.session is not None else None
    return str(peer[0]) if isinstance(peer, tuple) else "local"


def _envelope(session: Session, envelope: SmtpEnvelope) -> Envelope:
    """What the transaction has told so far, as the SDK's envelope."""
    return Envelope(
        mail_from=_sender(envelope.mail_from),
        rcpt_to=list(envelope.rcpt_tos),
        client_address=_client_address(session),
        client_name=session.host_name,
        helo=session.host_name,
        tls=session.ssl is not None,
        authenticated_user=str(session.auth_data) if session.authenticated else None,
    )


def _client_address(session: Session) -> str | None:
    peer: Any = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else None


def _received_count(raw: bytes) -> int:
    """``Received:`` fields in the header block (the body is not looked at)."""
    end = raw.find(b"\r\n\r\n")
    return len(_RECEIVED_RE.findall(raw, 0, len(raw) if end < 0 else end + 2))


def _protocol(tls: bool, session: Session) -> str:
    # RFC 3848's names, which tell a reader of the trace that the client authenticated.
    return ("ESMTPS" if tls else "ESMTP") + ("A" if session.authenticated else "")


async def _auth_blob(server: SMTP, inline: str | None, prompt: str) -> bytes | None:
    """One base64 AUTH value, given inline or asked for with a 334; ``None`` after a reply."""
    if inline is None:
        answer = await server.challenge_auth(prompt)
        return None if answer is MISSING else bytes(answer)
    if inline == "=":
        return b""
    try:
        return base64.b64decode(inline, validate=True)
    except (binascii.Error, ValueError):
        await server.push("501 5.5.2 Cannot decode base64")
        return None


def relay_warnings(config: Config) -> list[str]:
    """What ``mailwarden config check`` says about relaying when the listener is reachable
    from other machines (a loopback-only listener can only be used from this host)."""
    cfg = config.smtp
    if not cfg.enabled:
        return []
    try:
        exposed = not ipaddress.ip_address(cfg.listen).is_loopback
    except ValueError:
        exposed = cfg.listen not in ("localhost", "")
    if not exposed:
        return []
    warnings = []
    for text in cfg.trusted_networks:
        network = ipaddress.ip_network(text, strict=False)
        if network.prefixlen == 0:
            warnings.append(
                f"[smtp] trusted_networks has {text}: every client may relay through the "
                f"listener on {cfg.listen} (an open relay)"
            )
        elif not (network.is_private or network.is_loopback):
            warnings.append(
                f"[smtp] trusted_networks has {text}, which is not a private network: every "
                "host in it may relay to any domain"
            )
    if not config.gateway.local_domains:
        warnings.append(
            f"[gateway] local_domains is empty and [smtp] listen is {cfg.listen}: clients "
            "outside trusted_networks can send to no domain (554 Relay access denied); list "
            "the domains this gateway receives mail for"
        )
    if cfg.auth and not (cfg.starttls or cfg.tls_port):
        warnings.append("[smtp] auth needs TLS (starttls or tls_port): AUTH is never offered")
    return warnings


async def start_smtp_servers(
    gateway: Gateway, *, implicit_tls: bool = True
) -> list[asyncio.Server]:
    """Listen on ``[smtp] listen:port`` (STARTTLS) and ``tls_port`` (implicit TLS) if set."""
    cfg = gateway.config.smtp
    handler = SmtpHandler(gateway)
    limits = _Limits(cfg.max_connections, cfg.max_connections_per_ip)
    context: ssl.SSLContext | None = None
    if cfg.starttls or cfg.tls_port:
        context = await asyncio.to_thread(server_context, gateway.config)

    def factory(implicit: bool) -> Callable[[], GatewaySMTP]:
        return GatewaySMTP.factory(
            handler,
            hostname=gateway.config.gateway.hostname,
            ident="mailwarden ESMTP",
            data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=cfg.timeout,
            tls_context=None if implicit or not cfg.starttls else context,
            require_starttls=cfg.require_starttls and not implicit,
            limits=limits,
            implicit_tls=implicit,
            strict=True,
            forbid_bare_newline=cfg.forbid_bare_newline,
            bare_newline_exempt=handler.trusted_peer,
            junk_command_limit=cfg.junk_command_limit,
            auth_offered=handler.auth_offered,
            # A TLS port cannot take a PROXY header (it comes before the handshake).
            proxy_protocol_timeout=cfg.proxy_timeout
            if cfg.proxy_protocol and not implicit
            else None,
        )

    loop = asyncio.get_running_loop()
    reuse_port = worker_count(cfg.workers) > 1
    servers = [
        await loop.create_server(
            factory(False), sock=listening_socket(cfg.listen, cfg.port, reuse_port)
        )
    ]
    if implicit_tls and cfg.tls_port and context is not None:
        servers.append(
            await loop.create_server(
                factory(True),
                sock=listening_socket(cfg.listen, cfg.tls_port, reuse_port),
                ssl=context,
            )
        )
    return servers


async def start_smtp_server(gateway: Gateway) -> asyncio.Server:
    """Only the ``[smtp] port`` listener (for embedders and the test harness)."""
    return (await start_smtp_servers(gateway, implicit_tls=False))[0]

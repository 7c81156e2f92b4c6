"""RFC 5321 paths in MAIL FROM and RCPT TO, checked before anything is accepted.

aiosmtpd hands the argument to the email package's header parser, which is lenient by design
(``not-an-address`` and ``<not an address>`` come out as addresses). An envelope address ends up
in our ``Received:`` line, in delivery and in bounces, so it must be a mailbox as RFC 5321
4.1.2 defines it (with RFC 6531's UTF-8, since the listener offers SMTPUTF8): a dot-string or a
quoted string, ``@``, and a domain or an address literal. A source route (``<@a,@b:u@d>``) is
accepted and ignored, as section C of the RFC asks.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["split_path", "valid_mailbox"]

# Printable ASCII of RFC 5322 atext, plus any non-ASCII character (RFC 6531 UTF8-non-ascii).
# Lone surrogates are what aiosmtpd's surrogateescape makes of bytes that are not UTF-8.
_NON_ASCII = "\u0080-\ud7ff\ue000-\U0010ffff"
_ATEXT = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_NON_ASCII}]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_NON_ASCII}]|\\[\x20-\x7e])*"'
_LET_DIG = rf"[A-Za-z0-9{_NON_ASCII}]"
_LABEL = rf"{_LET_DIG}(?:[A-Za-z0-9\-{_NON_ASCII}]*{_LET_DIG})?"
_LOCAL_RE = re.compile(rf"(?:{_DOT_STRING}|{_QUOTED})")
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_ROUTE_RE = re.compile(rf"@{_LABEL}(?:\.{_LABEL})*(?:,@{_LABEL}(?:\.{_LABEL})*)*:")


def split_path(argument: str) -> tuple[str, str] | None:
    """``(path, parameters)`` from what follows ``FROM:`` or ``TO:``; ``None`` if unparseable.

    The path is what stands between the angle brackets (a quoted local part may hold ``>``).
    Without brackets (tolerated, as Postfix does) it runs to the first space.
    """
    text = argument.lstrip(" ")
    if not text.startswith("<"):
        path, _, rest = text.partition(" ")
        return path, rest
    quoted = False
    index = 1
    while index < len(text):
        char = text[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ">":
            rest = text[index + 1 :]
            if rest and not rest.startswith(" "):
                return None
            return text[1:index], rest.lstrip(" ")
        index += 1
    return None


def valid_mailbox(path: str) -> bool:
    """Whether ``path`` (without angle brackets; a source route allowed) is a mailbox."""
    route = _ROUTE_RE.match(path)
    if route:
        path = path[route.end() :]
    local, at, domain = path.rpartition("@")
    if not at or not local or not domain:
        return False
    if len(local.encode("utf-8", "surrogatepass")) > 64 or len(path) > 254:
        return False
    if not _LOCAL_RE.fullmatch(local):
        return False
    if domain.startswith("[") and domain.endswith("]"):
        return _address_literal(domain[1:-1])
    return len(domain) <= 255 and _DOMAIN_RE.fullmatch(domain) is not None


def _address_literal(text: str) -> bool:
    try:
        if text[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(text[5:])
        else:
            ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True

"""A seeded corpus shaped like real mail, or the user's own ``.eml`` files.

The shapes follow what a gateway sees: many small text and HTML messages, a fifth with base64
attachments that carry most of the bytes, some nested multiparts and forwarded messages,
non-UTF-8 charsets and encoded headers. The same seed gives the same bytes on every machine,
so two runs (or two machines) measure the same work.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

__all__ = ["generate", "load_directory"]

_WORDS = {
    "ascii": "invoice meeting report schedule budget project update quarterly figures attached "
    "please review thanks regards tomorrow friday agenda notes",
    "utf-8": "invoice meeting report schedule budget naïve café résumé déjà vu project update "
    "quarterly figures attached please review thanks regards",
    "iso-8859-1": "facture réunion rapport calendrier budget prévu équipe été àbientôt merci",
    "koi8-r": "счёт встреча отчёт бюджет проект спасибо пожалуйста документ неделя",
    "shift_jis": "請求書 会議 報告 予算 計画 よろしく お願いします 資料 確認",
    "windows-1251": "рахунок зустріч звіт бюджет проєкт дякую будь ласка документ",
}
# Magic bytes so detected-type checks and signature matching see real-looking files.
_ATTACHMENTS = [
    ("report.pdf", "application", "pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"),
    ("photo.png", "image", "png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
    ("archive.zip", "application", "zip", b"PK\x03\x04\x14\x00\x00\x00\x08\x00"),
    (
        "sheet.xlsx",
        "application",
        "vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        b"PK\x03\x04\x14\x00\x06\x00\x08\x00",
    ),
    ("scan.jpg", "image", "jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
]


def _sentence(rng: random.Random, charset: str, words: int) -> str:
    vocabulary = _WORDS[charset].split()
    return " ".join(rng.choice(vocabulary) for _ in range(words)).capitalize() + "."


def _text(rng: random.Random, charset: str, lines: int) -> str:
    return "\n".join(_sentence(rng, charset, rng.randint(6, 14)) for _ in range(lines)) + "\n"


def _headers(msg: EmailMessage, rng: random.Random, n: int, charset: str) -> None:
    msg["From"] = Address(
        "Sender " + str(n % 97), addr_spec=f"user{n % 211}@sender{n % 13}.example"
    )
    msg["To"] = f"rcpt{n % 53}@example.org"
    # Non-ASCII subjects become RFC 2047 encoded words: about a third of the corpus.
    language = charset if rng.random() < 0.3 else "ascii"
    msg["Subject"] = _sentence(rng, language, rng.randint(3, 7))
    msg["Message-ID"] = f"<bench-{n}@sender{n % 13}.example>"
    msg["Date"] = "Sat, 28 Nov 2026 12:00:00 +0000"


def _message(rng: random.Random, n: int, attachment_scale: float) -> EmailMessage:
    charset = rng.choice(list(_WORDS)[1:]) if rng.random() < 0.3 else "utf-8"
    msg = EmailMessage(policy=SMTP)
    _headers(msg, rng, n, charset)
    kind = rng.random()
    body = _text(rng, charset, rng.randint(3, 40))
    if kind < 0.5:  # plain text
        msg.set_content(body, charset=charset)
    elif kind < 0.75:  # HTML with a text alternative
        msg.set_content(body, charset=charset)
        html = "".join(f"<p>{line}</p>" for line in body.splitlines())
        msg.add_alternative(f"<html><body>{html}</body></html>", subtype="html", charset=charset)
    elif kind < 0.95:  # attachments: a fifth of the messages, most of the bytes
        msg.set_content(body, charset=charset)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            name, maintype, subtype, magic = rng.choice(_ATTACHMENTS)
            size = int(min(4_000_000, rng.lognormvariate(11.0, 1.0)) * attachment_scale)
            data = magic + rng.randbytes(max(0, size - len(magic)))
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    else:  # nested: alternative inside mixed, and a forwarded message
        msg.set_content(body, charset=charset)
        msg.add_alternative(f"<html><body><p>{body}</p></body></html>", subtype="html")
        inner = EmailMessage(policy=SMTP)
        _headers(inner, rng, n + 100_000, "utf-8")
        inner.set_content(_text(rng, "utf-8", 5))
        msg.add_attachment(inner)
    return msg


def generate(count: int, seed: int = 1, attachment_scale: float = 1.0) -> list[bytes]:
    """``count`` messages from ``seed``; ``attachment_scale`` shrinks attachments for quick runs."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        msg = _message(rng, n, attachment_scale)
        # The email package draws boundaries from the global random state; fixed ones keep
        # the bytes the same for the same seed.
        for depth, part in enumerate(p for p in msg.walk() if p.is_multipart()):
            part.set_boundary(f"=_mw_{seed}_{n}_{depth}")
        out.append(msg.as_bytes())
    return out


def load_directory(directory: Path, limit: int | None = None) -> list[bytes]:
    """The ``.eml`` files under ``directory`` (sorted, so runs are comparable)."""
    paths: Iterator[Path] = iter(sorted(directory.rglob("*.eml")))
    found: list[bytes] = []
    for path in paths:
        if limit is not None and len(found) >= limit:
            break
        found.append(path.read_bytes())
    if not found:
        raise FileNotFoundError(f"no .eml files under {directory}")
    return found

"""PDF through ``pikepdf`` (qpdf): every stream decoded, embedded files, JavaScript.

A stream whose filter qpdf cannot decode (JBIG2, a broken filter chain) is given raw, as
ClamAV would scan it. A PDF that needs a user password is ``encrypted``.
"""

from __future__ import annotations

import io
from typing import Any

from ..errors import Corrupt, Encrypted, Unsupported
from . import Budget, Members

_HEAD = 8192
_TAIL = 4096


def read_pdf(budget: Budget, data: bytes, kind: str) -> Members:
    """Decoded streams, embedded files and JavaScript of a PDF document."""
    if data.find(b"obj", 0, _HEAD) < 0 and data.find(b"startxref", max(len(data) - _TAIL, 0)) < 0:
        # Writers put the first object right after the header and end the file with startxref:
        # a file with neither is not one qpdf reads but by scanning all of it to rebuild the
        # cross-reference table (3 ms for 100 KB). Looking only there, not for "obj" in the
        # whole file, keeps the bench corpus's noise behind a %PDF header (5 ms a 400
        # messages) off the antivirus stage.
        raise Corrupt(
            f"pdf: no object in the first {_HEAD >> 10} KiB, no startxref in the last "
            f"{_TAIL >> 10} KiB"
        )
    try:
        import pikepdf
    except ImportError:
        raise Unsupported("pdf: pikepdf is not installed") from None
    try:
        pdf = pikepdf.open(io.BytesIO(data))
    except pikepdf.PasswordError:
        raise Encrypted("pdf: password-protected") from None
    except pikepdf.PdfError as exc:
        raise Corrupt(f"pdf: {exc}") from None
    with pdf:
        try:
            for index, obj in enumerate(pdf.objects):
                budget._check_clock()
                if isinstance(obj, pikepdf.Stream):
                    yield f"stream {index}", _stream(budget, obj, pikepdf)
                elif isinstance(obj, pikepdf.Dictionary) and "/JS" in obj:
                    script = _javascript(obj["/JS"], pikepdf)
                    if script:
                        budget._member()
                        budget._grow(len(script))
                        yield f"javascript {index}", script
            for name, attached in pdf.attachments.items():
                budget._member()
                content = attached.get_file().read_bytes()
                budget._grow(len(content))
                yield name, content
        except pikepdf.PdfError as exc:
            raise Corrupt(f"pdf: {exc}") from None


def _stream(budget: Budget, stream: Any, pikepdf: Any) -> bytes:
    budget._member()
    raw = stream.read_raw_bytes()
    try:
        decoded = stream.read_bytes()
    except pikepdf.PdfError:
        decoded = raw
    budget._grow(len(decoded))
    budget._ratio(len(decoded), len(raw))
    return bytes(decoded)


def _javascript(value: Any, pikepdf: Any) -> bytes:
    if isinstance(value, pikepdf.Stream):
        return b""  # a stream: yielded with the others
    if isinstance(value, pikepdf.String):
        return bytes(value)
    return b""

"""OLE2 compound files (doc, xls, ppt, msi, ...) through ``olefile`` and ``oletools``.

Every stream is a member; VBA macro source is decompressed by ``olevba`` and scanned as text;
``\\x01Ole10Native`` streams give the embedded file they carry. A document encrypted with a
password (an ``EncryptedPackage`` stream, or RC4/XOR ``EncryptionInfo``) is ``encrypted``.
"""

from __future__ import annotations

import io
from typing import Any

from ..errors import Corrupt, Encrypted, Unsupported
from . import Budget, Members


def _import() -> tuple[Any, Any]:
    try:
        import olefile
        from oletools import oleobj, olevba
    except ImportError as exc:
        raise Unsupported(f"ole2: {exc.name} is not installed") from None
    return olefile, (oleobj, olevba)


def read_ole(budget: Budget, data: bytes, kind: str) -> Members:
    """Every stream, the macros' source and embedded native objects of a compound file."""
    olefile, (oleobj, olevba) = _import()
    try:
        ole = olefile.OleFileIO(io.BytesIO(data))
    except Exception as exc:  # olefile raises OSError or its own parsing errors
        raise Corrupt(f"{kind}: {exc}") from None
    with ole:
        streams = ole.listdir(streams=True, storages=False)
        if not streams:
            raise Corrupt(f"{kind}: no stream in the directory could be read")
        names = {"/".join(path) for path in streams}
        if "EncryptedPackage" in names or "EncryptionInfo" in names or kind == "ole2-encrypted":
            raise Encrypted(f"{kind}: password-protected document")
        if _word_encrypted(ole):
            raise Encrypted(f"{kind}: password-protected Word document")
        if _excel_encrypted(ole):
            raise Encrypted(f"{kind}: password-protected Excel workbook (FILEPASS)")
        for path in streams:
            budget._member()
            name = "/".join(path)
            try:
                size = ole.get_size(path)
                budget._grow(size)
                stream = ole.openstream(path).read()
            except (OSError, ValueError) as exc:
                raise Corrupt(f"{kind}: stream {name}: {exc}") from None
            yield name, stream
            if path[-1] == "\x01Ole10Native":
                try:
                    native = oleobj.OleNativeStream(stream)
                except Exception as exc:
                    raise Corrupt(f"{kind}: Ole10Native {name}: {exc}") from None
                if native.data:
                    budget._member()
                    budget._grow(len(native.data))
                    yield f"{name}/{native.filename or 'native'}", bytes(native.data)
    yield from _macros(budget, data, kind, olevba)


def _macros(budget: Budget, data: bytes, kind: str, olevba: Any) -> Members:
    try:
        parser = olevba.VBA_Parser("document", data=data)
    except Exception as exc:
        raise Corrupt(f"{kind}: VBA project: {exc}") from None
    try:
        if not parser.detect_vba_macros():
            return
        for _, stream, name, source in parser.extract_macros():
            text = source.encode("utf-8", "surrogateescape") if isinstance(source, str) else source
            budget._member()
            budget._grow(len(text))
            yield f"{stream}/{name} (VBA source)", text
    except Exception as exc:
        raise Corrupt(f"{kind}: VBA macros: {exc}") from None
    finally:
        parser.close()


def _word_encrypted(ole: Any) -> bool:
    """The FIB's fEncrypted bit of a Word document (RC4 or XOR obfuscation in place)."""
    if not ole.exists("WordDocument"):
        return False
    fib = ole.openstream("WordDocument").read(12)
    return len(fib) >= 12 and bool(fib[11] & 0x01)


def _excel_encrypted(ole: Any) -> bool:
    """A FILEPASS record among the workbook globals (BIFF5/8: RC4 or XOR encryption)."""
    name = "Workbook" if ole.exists("Workbook") else "Book" if ole.exists("Book") else None
    if name is None:
        return False
    stream = ole.openstream(name).read(1 << 16)
    at = 0
    for _ in range(4096):
        if at + 4 > len(stream):
            return False
        kind, size = (
            int.from_bytes(stream[at : at + 2], "little"),
            int.from_bytes(stream[at + 2 : at + 4], "little"),
        )
        if kind == 0x002F:
            return True
        if kind == 0x000A:  # EOF of the globals substream
            return False
        at += 4 + size
    return False

"""The native signature engine, for detectors that match byte signatures.

Compile ClamAV body signatures with :class:`SignatureCompiler`, write the blob to a file and
open it with :meth:`SignatureDB.load` (memory-mapped, so worker processes share one copy),
then :meth:`SignatureDB.scan` whole objects or stream them through a :class:`SigScanner`.
A scan that could not record every hit raises :class:`NativeLimitError` (a result that is
incomplete, so the object is not scanned, never clean); a signature that is not body-signature
syntax raises :class:`NativeSyntaxError`, a :class:`SignatureError`.
"""

from mailwarden_native import (
    MAX_HITS,
    MAX_PARTIALS,
    OFF_ABS,
    OFF_ANY,
    OFF_EOF,
    NativeError,
    NativeLimitError,
    NativeSyntaxError,
    SigHit,
    SignatureCompiler,
    SignatureDB,
    SignatureError,
    SigScanner,
)

__all__ = [
    "MAX_HITS",
    "MAX_PARTIALS",
    "OFF_ABS",
    "OFF_ANY",
    "OFF_EOF",
    "NativeError",
    "NativeLimitError",
    "NativeSyntaxError",
    "SigHit",
    "SigScanner",
    "SignatureCompiler",
    "SignatureDB",
    "SignatureError",
]

"""The native signature engine, for detectors that match byte signatures.

Compile ClamAV body signatures with :class:`SignatureCompiler`, write the blob to a file and
open it with :meth:`SignatureDB.load` (memory-mapped, so worker processes share one copy),
then :meth:`SignatureDB.scan` whole objects or stream them through a :class:`SigScanner`.
"""

from mailwarden_native import (
    OFF_ABS,
    OFF_ANY,
    OFF_EOF,
    SigHit,
    SignatureCompiler,
    SignatureDB,
    SignatureError,
    SigScanner,
)

__all__ = [
    "OFF_ABS",
    "OFF_ANY",
    "OFF_EOF",
    "SigHit",
    "SigScanner",
    "SignatureCompiler",
    "SignatureDB",
    "SignatureError",
]

"""mailwarden_native: the Python face of mailwarden's C core.

MIME parsing into a zero-copy part table, tolerant transfer decoders and a
literal multi-pattern matcher.  All heavy work runs in C with the GIL
released; this package owns buffers, lifetimes and error mapping.
"""

from ._decode import decode_base64, decode_base64_ex, decode_quoted_printable
from ._errors import NativeError
from ._matcher import Matcher
from ._mime import MalformationFlag, ParsedMessage, ParseLimits, Part, parse
from ._params import parse_params
from ._sigs import (
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
    "MalformationFlag",
    "Matcher",
    "NativeError",
    "ParseLimits",
    "ParsedMessage",
    "Part",
    "SigHit",
    "SigScanner",
    "SignatureCompiler",
    "SignatureDB",
    "SignatureError",
    "decode_base64",
    "decode_base64_ex",
    "decode_quoted_printable",
    "parse",
    "parse_params",
]

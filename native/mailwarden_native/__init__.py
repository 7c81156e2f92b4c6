"""mailwarden_native: the Python face of mailwarden's C core.

MIME parsing into a zero-copy part table, tolerant transfer decoders, content
extraction (charsets, RFC 2047, HTML to text, URLs, file types, uuencode) and a
literal multi-pattern matcher.  All heavy work runs in C with the GIL
released; this package owns buffers, lifetimes and error mapping.
"""

from ._content import (
    FILE_TYPES,
    HeaderFlag,
    TextFlag,
    Url,
    UrlFlag,
    UUFile,
    decode_header,
    decode_header_ex,
    decode_text,
    detect_type,
    extract_urls,
    find_uuencoded,
    html_to_text,
    resolve_charset,
)
from ._decode import decode_base64, decode_base64_ex, decode_quoted_printable
from ._errors import (
    NativeArgumentError,
    NativeError,
    NativeFormatError,
    NativeLimitError,
    NativeMemoryError,
    NativeSyntaxError,
    NativeTooLargeError,
    NativeVersionError,
    strerror,
)
from ._fuzzy import shingle_sketch
from ._matcher import Matcher
from ._metas import OP, FlagExpressions, code_point_bytes
from ._milter import milter_headers, tcp_quickack
from ._mime import MalformationFlag, ParsedMessage, ParseLimits, Part, parse
from ._params import parse_params
from ._sigs import (
    MAX_HITS,
    MAX_PARTIALS,
    OFF_ABS,
    OFF_ANY,
    OFF_EOF,
    SigHit,
    SignatureCompiler,
    SignatureDB,
    SignatureError,
    SigScanner,
)
from ._spool import (
    SPOOL_AT_DIR,
    SPOOL_AT_RENAME,
    SPOOL_COMMIT,
    SPOOL_DATASYNC,
    SPOOL_DIR_ALWAYS,
    SPOOL_DIR_IF_COMMIT,
    SPOOL_DIR_NONE,
    SPOOL_DIRSYNC,
    SPOOL_TRUNCATE,
    SpoolQueue,
    spool_batch,
)
from ._version import check_core_version, core_version
from ._words import ascii_words, paragraph_lines, unicode_words

# A core from another build must not run under this Python code: refused at import.
check_core_version()

__all__ = [
    "FILE_TYPES",
    "MAX_HITS",
    "MAX_PARTIALS",
    "OFF_ABS",
    "OFF_ANY",
    "OFF_EOF",
    "OP",
    "SPOOL_AT_DIR",
    "SPOOL_AT_RENAME",
    "SPOOL_COMMIT",
    "SPOOL_DATASYNC",
    "SPOOL_DIRSYNC",
    "SPOOL_DIR_ALWAYS",
    "SPOOL_DIR_IF_COMMIT",
    "SPOOL_DIR_NONE",
    "SPOOL_TRUNCATE",
    "FlagExpressions",
    "HeaderFlag",
    "MalformationFlag",
    "Matcher",
    "NativeArgumentError",
    "NativeError",
    "NativeFormatError",
    "NativeLimitError",
    "NativeMemoryError",
    "NativeSyntaxError",
    "NativeTooLargeError",
    "NativeVersionError",
    "ParseLimits",
    "ParsedMessage",
    "Part",
    "SigHit",
    "SigScanner",
    "SignatureCompiler",
    "SignatureDB",
    "SignatureError",
    "SpoolQueue",
    "TextFlag",
    "UUFile",
    "Url",
    "UrlFlag",
    "ascii_words",
    "code_point_bytes",
    "core_version",
    "decode_base64",
    "decode_base64_ex",
    "decode_header",
    "decode_header_ex",
    "decode_quoted_printable",
    "decode_text",
    "detect_type",
    "extract_urls",
    "find_uuencoded",
    "html_to_text",
    "milter_headers",
    "paragraph_lines",
    "parse",
    "parse_params",
    "resolve_charset",
    "shingle_sketch",
    "spool_batch",
    "strerror",
    "tcp_quickack",
    "unicode_words",
]

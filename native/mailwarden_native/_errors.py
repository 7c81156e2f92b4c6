"""Exceptions raised by the native binding, and :func:`check`, the one place where a status
code of the C core (``mw_status``) becomes one of them.

Every code has its own class, so callers catch what they can handle: a scan whose result is
incomplete (:class:`NativeLimitError`) is never mistaken for one that found nothing.
"""

from __future__ import annotations

from ._core import ffi, lib


class NativeError(Exception):
    """The native core could not do its job; ``status`` is its ``mw_status`` code and
    ``function`` the C function that returned it.

    Malformed mail never raises this: it is reported through flags.
    """

    def __init__(self, message: str, *, status: int = 0, function: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.function = function


class NativeMemoryError(NativeError, MemoryError):
    """The core ran out of memory (``MW_ERR_NOMEM``)."""


class NativeArgumentError(NativeError, ValueError):
    """An argument the core refuses (``MW_ERR_ARG``): a binding bug, or an unaligned buffer."""


class NativeFormatError(NativeError, ValueError):
    """A signature database that fails validation, or another build's (``MW_ERR_BAD_DB``)."""


class NativeLimitError(NativeError):
    """A bound was reached: the work was not done, or its result is incomplete.

    ``MW_ERR_SCAN_LIMIT``: a scan met more hits or partial matches than its limit and stopped
    recording, so its hits are a subset: treat the object as not scanned, never as clean.
    """


class NativeTooLargeError(NativeLimitError, ValueError):
    """A table or database would pass its size limit (``MW_ERR_TOO_LARGE``)."""


class SignatureError(NativeError, ValueError):
    """One signature could not be compiled; ``code`` (an ``MW_ERR_SIG_*`` status) and
    ``reason`` (its fixed text) say why, ``pattern`` is the signature text and ``line``
    where it came from (``file:line``) when the caller said."""

    def __init__(
        self, code: int, reason: str, *, pattern: str = "", line: str = "", function: str = ""
    ) -> None:
        where = f"{line}: " if line else ""
        shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
        text = f"{where}{reason}: {shown!r}" if pattern else f"{where}{reason}"
        super().__init__(text, status=code, function=function)
        self.code = code
        self.reason = reason
        self.pattern = pattern
        self.line = line


class NativeSyntaxError(SignatureError):
    """A signature that is not ClamAV body-signature syntax (``MW_ERR_SIG_SYNTAX``)."""


class NativeVersionError(NativeError, ImportError):
    """The compiled core is not the version of the Python package that loads it."""


_CLASSES: dict[int, type[NativeError]] = {
    int(lib.MW_ERR_NOMEM): NativeMemoryError,
    int(lib.MW_ERR_ARG): NativeArgumentError,
    int(lib.MW_ERR_TOO_LARGE): NativeTooLargeError,
    int(lib.MW_ERR_BAD_DB): NativeFormatError,
    int(lib.MW_ERR_SCAN_LIMIT): NativeLimitError,
}
_SIGNATURE_CODES = frozenset(
    int(code)
    for code in (
        lib.MW_ERR_SIG_SYNTAX,
        lib.MW_ERR_SIG_NOANCHOR,
        lib.MW_ERR_SIG_LIMIT,
        lib.MW_ERR_SIG_VARALT,
        lib.MW_ERR_SIG_SPECIAL,
    )
)
_OK = int(lib.MW_OK)


def strerror(status: int) -> str:
    """The core's text for a status code (``mw_strerror``)."""
    return ffi.string(lib.mw_strerror(status)).decode("ascii")


def error_for(
    status: int, function: str, *, pattern: str = "", line: str = "", context: str = ""
) -> NativeError:
    """The exception for a failed status: its class by code, its text from ``mw_strerror``."""
    reason = strerror(status)
    if status in _SIGNATURE_CODES:
        cls = NativeSyntaxError if status == lib.MW_ERR_SIG_SYNTAX else SignatureError
        return cls(status, reason, pattern=pattern, line=line, function=function)
    message = f"{function}: {reason}" + (f" ({context})" if context else "")
    return _CLASSES.get(status, NativeError)(message, status=status, function=function)


def check(status: int, function: str, **details: str) -> None:
    """Raise the exception for ``status`` unless it is ``MW_OK``; every status a binding
    function gets from the core goes through here."""
    if status != _OK:
        raise error_for(int(status), function, **details)

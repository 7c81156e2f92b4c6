"""How opening one object inside a message can fail: what the walk (archives.py) reports.

The readers raise these and the walk catches them, so they sit below both: the walk imports
the readers, and a reader importing the walk for its exceptions would close a cycle.
"""

from __future__ import annotations

__all__ = ["Corrupt", "Encrypted", "LimitHit", "Refused", "Unsupported", "describe"]


class LimitHit(Exception):
    """A limit of the walk was reached (``limit`` names it): the rest is ``not_scanned``."""

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(detail)
        self.limit = limit


class Corrupt(Exception):
    """An object that does not read as its format (``exception``: the reader's own error)."""

    def __init__(self, detail: str, exception: str = "") -> None:
        super().__init__(detail)
        self.exception = exception

    @classmethod
    def of(cls, kind: str, exc: BaseException) -> Corrupt:
        """``exc`` of the reader of ``kind`` as a Corrupt naming both."""
        return cls(describe(kind, exc), type(exc).__name__)


class Refused(LimitHit):
    """An object not opened because its header asks for more than a limit allows: reported
    ``not_scanned`` on its own, and the walk goes on (nothing was spent on it)."""


class Encrypted(Exception):
    """An object that needs a password to be read."""


class Unsupported(Exception):
    """A container (or a compression method in it) no reader here handles."""


def describe(kind: str, exc: BaseException) -> str:
    """``"7z: CrcError: (...)"``: the format and the exception, for the finding's reason."""
    text = str(exc)[:200]
    return f"{kind}: {type(exc).__name__}: {text}" if text else f"{kind}: {type(exc).__name__}"

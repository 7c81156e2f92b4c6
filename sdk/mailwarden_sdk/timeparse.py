"""The one time grammar of every ``--since`` / ``--until`` option, core's and plugins'.

Accepted, case-insensitive:

- an age: one or more ``N`` + unit (``s``, ``m``, ``h``, ``d``, ``w``), e.g. ``90s``, ``2h``,
  ``1d12h``, optionally followed by `` ago``: that long before now;
- ``now``, ``today`` (local midnight) and ``yesterday`` (the local midnight before);
- an ISO 8601 date or date and time (``2026-12-06``, ``2026-12-06T08:30``, with ``Z`` or an
  offset; without one it is local time);
- a Unix time in seconds (``1765000000``, ``1765000000.5``).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import TYPE_CHECKING, Any

import click

__all__ = ["TIME_FORMS", "TimeParam", "parse_time"]

#: What :func:`parse_time` accepts, for help and error texts.
TIME_FORMS = "an age (90s, 2h, 1d12h, 3w), now, today, yesterday, an ISO date/time or a Unix time"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(?:\d+[smhdw])+")
_PART = re.compile(r"(\d+)([smhdw])")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_time(value: str, now: float | None = None) -> float:
    """The Unix time ``value`` names (see the module docstring); ``ValueError`` naming the
    accepted forms when it names none. ``now`` is the reference for ages (default: now)."""
    reference = time.time() if now is None else now
    text = value.strip().lower()
    if text.endswith(" ago"):
        text = text[:-4].strip()
        if not _AGE.fullmatch(text):
            raise ValueError(f"{value!r} is not a time: expected {TIME_FORMS}")
    if _AGE.fullmatch(text):
        return reference - sum(int(n) * _UNITS[u] for n, u in _PART.findall(text))
    if text == "now":
        return reference
    if text in ("today", "yesterday"):
        midnight = dt.datetime.fromtimestamp(reference).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        if text == "yesterday":
            midnight -= dt.timedelta(days=1)
        return midnight.timestamp()
    if _NUMBER.fullmatch(text):
        return float(text)
    try:
        # fromisoformat takes "Z" since 3.11; upper case: "t" and "z" are lowered above.
        return dt.datetime.fromisoformat(text.upper()).timestamp()
    except ValueError:
        raise ValueError(f"{value!r} is not a time: expected {TIME_FORMS}") from None


if TYPE_CHECKING:
    _ParamType = click.ParamType[float, Any]
else:  # generic only in newer click releases
    _ParamType = click.ParamType


class TimeParam(_ParamType):
    """The click parameter type of ``--since`` / ``--until``: converts to a Unix time, and a
    value in none of the forms is a usage error that lists them."""

    name = "time"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        """The Unix time of ``value`` (a float is passed through)."""
        if isinstance(value, float):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)

"""The stages of the way through, as named in timings, events and benchmarks."""

from __future__ import annotations

import enum
import time

__all__ = ["Stage", "detector_stage", "elapsed_ms"]


class Stage(enum.StrEnum):
    """One stage of the pipeline, in order; the value is its key in ``timings_ms``."""

    PARSE = "parse"
    DETECT = "detect"
    DECIDE = "decide"
    ACT = "act"
    RECORD = "record"


def detector_stage(name: str) -> str:
    """The ``timings_ms`` key of one detector's run within :attr:`Stage.DETECT`."""
    return f"detector.{name}"


def elapsed_ms(began: float) -> float:
    """Milliseconds since ``began`` (a ``time.perf_counter()`` reading), as timings keep them."""
    return round((time.perf_counter() - began) * 1000.0, 3)

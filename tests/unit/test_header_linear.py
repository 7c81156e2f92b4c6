"""Header handling grows linearly with the number of header fields (issue 25).

A 64 KB message with 7,250 header fields froze the gateway for 21.7 s: looking up a field by
name scanned every field, and the antispam rule targets look up each field name once. The work
is counted here (interpreter calls, every thread), never timed.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from mailwarden.testing import expect_finding, scan
from mailwarden_antispam import AntispamPlugin
from mailwarden_sdk import parse

# Local checks only: the header work is what is measured, not DNS or the Bayes store.
_CONFIG = "[antispam]\nauthentication = false\nbayes = false\n"


def _bomb(fields: int) -> bytes:
    # Every value an RFC 2047 word, so each field is also decoded.
    lines = b"".join(b"X%d: =?utf-8?q?caf=C3=A9_%d?=\r\n" % (i, i) for i in range(fields))
    return b"Subject: x\r\n" + lines + b"\r\nbody\r\n"


def _calls(work: Any) -> int:
    """Python and C function calls made by ``work()`` in this thread and the threads it starts."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        count += 1

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return count


def _antispam_calls(fields: int) -> int:
    raw = _bomb(fields)
    return _calls(lambda: scan(raw, plugins={"antispam": AntispamPlugin}, config=_CONFIG))


def test_antispam_header_work_grows_linearly_with_the_fields() -> None:
    # Each scan also starts a gateway (rules compiled): differences leave that out. Linear
    # work doubles its increment when the step doubles; the quadratic lookup made it 3.9x.
    _antispam_calls(10)  # first use: imports and caches that later scans find ready
    at = {n: _antispam_calls(n) for n in (500, 1000, 2000)}
    first, second = at[1000] - at[500], at[2000] - at[1000]
    assert second < 2.5 * first, at


def test_looking_up_every_field_by_name_is_linear() -> None:
    def lookups(fields: int) -> int:
        message = parse(_bomb(fields))
        names = [name for name, _ in message.headers]
        return _calls(lambda: [message.decoded_header(name) for name in names])

    small, large = lookups(1000), lookups(4000)
    assert large < 5 * small, (small, large)


def test_rules_see_the_last_of_7250_fields_decoded(tmp_path: Path) -> None:
    rules = tmp_path / "last.cf"
    rules.write_text(
        "header   LAST_FIELD   X7249 =~ /^caf\u00e9 7249$/\nscore    LAST_FIELD   1.5\n",
        encoding="utf-8",
    )
    config = _CONFIG + f"rule_files = ['{rules}']\n"
    decision = scan(_bomb(7250), plugins={"antispam": AntispamPlugin}, config=config)
    assert expect_finding(decision, "LAST_FIELD").score == 1.5
    message = parse(_bomb(7250))
    assert len(message.headers) == 7251
    assert message.decoded_header("x7249") == "caf\u00e9 7249"
    assert message.header_all("X0") == ["=?utf-8?q?caf=C3=A9_0?="]

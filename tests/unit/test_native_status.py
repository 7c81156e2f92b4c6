"""The native core's one status type as callers see it: every failure its own code and text
and its own exception class, an incomplete signature scan raised (never a shorter hit list),
and a core of another version refused at import.

The limits are the public ones (``max_hits``, ``max_partials`` of a SignatureDB), reached
with real signatures and data; nothing is mocked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mailwarden_native
from mailwarden.testing import build_message
from mailwarden_antivirus.signatures import SignatureSet
from mailwarden_native import (
    OFF_EOF,
    NativeError,
    NativeFormatError,
    NativeLimitError,
    NativeSyntaxError,
    NativeVersionError,
    SignatureCompiler,
    SignatureDB,
    SignatureError,
    strerror,
)
from mailwarden_native._core import lib
from tests.unit.test_antivirus import Run, av_findings

ROOT = Path(__file__).resolve().parents[2]
MARKERS = [b"first-marker-xyz", b"second-marker-xyz", b"third-marker-xyz"]


def _statuses() -> dict[str, int]:
    # the enum as the C header declares it (cdef/base.h lists every member)
    text = (ROOT / "native/cdef/base.h").read_text()
    names = re.findall(r"^\s+(MW_(?:OK|ERR_\w+)),", text, re.M)
    return {name: int(getattr(lib, name)) for name in names}


def test_every_failure_has_its_own_code_and_text() -> None:
    codes = _statuses()
    assert "MW_ERR_NOMEM" in codes and "MW_ERR_SIG_SYNTAX" in codes
    assert len(set(codes.values())) == len(codes), codes  # NOMEM and SIG_SYNTAX were both 1
    texts = {strerror(code) for code in codes.values()}
    assert len(texts) == len(codes)
    assert "unknown status" not in texts
    assert strerror(int(lib.MW_STATUS_COUNT)) == "unknown status"


def test_a_malformed_signature_raises_a_syntax_error_naming_its_line() -> None:
    compiler = SignatureCompiler()
    with pytest.raises(NativeSyntaxError) as caught:
        compiler.add("41424344zz45", line="daily.ndb:12")
    err = caught.value
    assert isinstance(err, SignatureError) and isinstance(err, ValueError)
    assert str(err) == "daily.ndb:12: not valid body-signature syntax: '41424344zz45'"
    assert err.reason == "not valid body-signature syntax"  # what skip counts are keyed by
    assert err.status == lib.MW_ERR_SIG_SYNTAX and err.function == "mw_sigc_add"
    # a refusal for another reason is a SignatureError, not a syntax error
    with pytest.raises(SignatureError) as other:
        compiler.add("41??????42")
    assert not isinstance(other.value, NativeSyntaxError)
    assert other.value.reason == "a part has fewer than 2 fixed bytes to anchor on"
    assert len(compiler) == 0  # refused signatures leave nothing behind
    assert compiler.add("41424344") == 0


def _db(patterns: list[str], **limits: int) -> SignatureDB:
    compiler = SignatureCompiler()
    for pattern in patterns:
        compiler.add(pattern)
    return SignatureDB.from_bytes(compiler.build(), **limits)


def test_a_scan_over_its_hit_limit_raises_instead_of_returning_fewer_hits() -> None:
    data = b"..." + b" ".join(MARKERS) + b"..."
    patterns = [m.hex() for m in MARKERS]
    assert [h.sig_id for h in _db(patterns, max_hits=3).scan(data)] == [0, 1, 2]
    capped = _db(patterns, max_hits=2)
    with pytest.raises(NativeLimitError, match="scan incomplete"):
        capped.scan(data)
    # the limit is per object: one with two hits still scans
    assert [h.sig_id for h in capped.scan(MARKERS[0] + MARKERS[2])] == [0, 2]
    # streaming: the failure sticks to the object until the next one starts
    scanner = capped.scanner()
    scanner.feed(data[:20])
    with pytest.raises(NativeLimitError):
        scanner.feed(data[20:])
    with pytest.raises(NativeLimitError):
        scanner.finish()
    scanner.reset()
    scanner.feed(MARKERS[1])
    assert [h.sig_id for h in scanner.finish()] == [1]


def test_partial_matches_over_their_limit_raise() -> None:
    # Three two-part signatures whose first parts all occur: each waits for its second part.
    patterns = [f"{m.hex()}*{b'-tail'.hex()}" for m in MARKERS]
    data = b" ".join(MARKERS)
    assert _db(patterns).scan(data) == []
    with pytest.raises(NativeLimitError):
        _db(patterns, max_partials=2).scan(data)
    assert len(_db(patterns, max_partials=3).scan(data + b"-tail")) == 3


def test_an_eof_signature_too_costly_to_place_makes_the_scan_incomplete() -> None:
    # "AB" at the EOF offset, then a "CD" part and an "EF" part anywhere after it: placing
    # the two unbounded gaps over an 8 KB tail takes more part checks than the budget, so a
    # match may be among the placements not tried.
    compiler = SignatureCompiler()
    compiler.add("4142*4344*4546", kind=OFF_EOF, offset=8002)
    db = SignatureDB.from_bytes(compiler.build())
    assert db.scan(b"AB" + b"CD" * 10 + b"EF" + b"x" * 7978) != []  # found within the budget
    with pytest.raises(NativeLimitError):
        db.scan(b"AB" + b"CD" * 4000)
    assert db.scan(b"x" * 8002) == []  # "AB" not at its offset: nothing to place


def test_a_limit_out_of_range_is_refused_when_the_database_is_opened() -> None:
    with pytest.raises(ValueError, match="max_hits must be an int"):
        _db(["41424344"], max_hits=0)


def test_a_damaged_database_is_a_format_error() -> None:
    compiler = SignatureCompiler()
    compiler.add("41424344")
    blob = bytearray(compiler.build())
    blob[20] ^= 0xFF
    with pytest.raises(NativeFormatError, match="not a valid mailwarden signature database"):
        SignatureDB.from_bytes(bytes(blob))
    with pytest.raises(ValueError):  # what the antivirus' cache loader catches
        SignatureDB.from_bytes(b"\0" * 64)


def test_an_incomplete_scan_makes_the_antivirus_verdict_not_scanned(tmp_path: Path) -> None:
    run = Run(tmp_path / "home")
    try:
        plugin = run.runner.gateway.plugins.pm.get_plugin("antivirus")
        sets = SignatureSet(
            names=[m.decode() for m in MARKERS],
            db=_db([m.hex() for m in MARKERS], max_hits=2),
        )
        sets._index()
        plugin.signatures = sets
        outcome = run.process(build_message(body=b" ".join(MARKERS).decode() + "\n"))
    finally:
        run.close()
    verdict = outcome.decision.verdict
    assert verdict.antivirus.value == "not_scanned", av_findings(outcome)
    assert outcome.decision.action.kind.value != "deliver"
    codes = {(code, details.get("engine")) for code, _, details in av_findings(outcome)}
    assert codes == {("AV_NOT_SCANNED", "native")}


def _fake_package(tmp_path: Path, version: str) -> dict[str, str]:
    # A distribution "mailwarden" of another version ahead on sys.path: what importlib.metadata
    # reports when the installed package and the compiled core come from different builds.
    info = tmp_path / f"mailwarden-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mailwarden\nVersion: {version}\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    return env


def test_a_core_of_another_version_is_refused_at_import(tmp_path: Path) -> None:
    core = mailwarden_native.core_version()
    env = _fake_package(tmp_path, "9.9.9")
    probe = subprocess.run(
        [sys.executable, "-c", "import mailwarden_native"],
        env=env,
        cwd=tmp_path,  # not the checkout, whose mailwarden.egg-info would be found first
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0
    assert "NativeVersionError" in probe.stderr
    assert f"native core is version {core} but the Python package is version 9.9.9" in (
        probe.stderr
    )
    assert issubclass(NativeVersionError, NativeError)


def test_mailwarden_version_prints_the_cores_own_version(tmp_path: Path) -> None:
    cli = [str(Path(sys.executable).parent / "mailwarden"), "version"]
    ok = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    core = mailwarden_native.core_version()
    assert f"native core {core}\n" in ok.stdout
    # with the package claiming another version, the core is not reported as that version
    env = _fake_package(tmp_path, "9.9.9")
    bad = subprocess.run(cli, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "native core 9.9.9" not in bad.stdout
    assert bad.returncode != 0 and "9.9.9" in bad.stderr and core in bad.stderr


@pytest.mark.parametrize("command", [["mailwarden"], [sys.executable, "-m", "mailwarden"]])
def test_mailwarden_with_a_core_of_another_version_says_so_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    if command == ["mailwarden"]:
        command = [str(Path(sys.executable).parent / "mailwarden")]
    core = mailwarden_native.core_version()
    env = _fake_package(tmp_path, "9.9.9")
    for args in (["version"], ["scan", "--help"]):
        bad = subprocess.run(
            [*command, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert bad.returncode == 2
        assert bad.stdout == ""
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr, bad.stderr
        assert bad.stderr.startswith("mailwarden: ")
        assert f"native core is version {core} but the Python package is version 9.9.9" in (
            bad.stderr
        )


def test_core_pyi_declares_every_function_and_constant_of_the_cdef() -> None:
    cdef = "\n".join(p.read_text() for p in sorted((ROOT / "native/cdef").glob("*.h")))
    cdef = re.sub(r"/\*.*?\*/", "", cdef, flags=re.S)
    functions = set(re.findall(r"\b(mw_\w+)\(", cdef))
    constants = set(re.findall(r"\b(MW_[A-Z0-9_]+)\b", cdef))
    pyi = (ROOT / "native/mailwarden_native/_core.pyi").read_text()
    declared_functions = set(re.findall(r"def (mw_\w+)\(", pyi))
    declared_constants = set(re.findall(r"^    (MW_\w+): int$", pyi, re.M))
    assert functions == declared_functions
    assert constants == declared_constants
    lib_class = pyi[pyi.index("class _Lib:") :]
    assert "Any" not in lib_class

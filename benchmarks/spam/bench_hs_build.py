"""The antispam hyperscan databases scanned by two hyperscan builds: the wheel's and the system's.

Usage: .venv/bin/python benchmarks/spam/bench_hs_build.py [--messages N] [--rounds R]
[--spam-rules DIR] [--lib PATH] [--cache DIR] [--only DATABASE] [--rank N]

The ``hyperscan`` wheel bundles vectorscan built for one baseline target (its database info
names no CPU feature); Debian's ``libhs.so.5`` is hyperscan built with FAT_RUNTIME: each scan
entry point exists once per code path (``core2_hs_scan``, ``corei7_``, ``avx2_``, ``avx512_``,
``avx512vbmi_``) and ``hs_scan`` picks the best one the CPU has when the library loads.

The databases are the antispam plugin's own: the plugin is configured as ``bench_stage.py``
configures it (shipped rules plus ``--spam-rules``), and each :class:`PatternSet`'s chosen
rewrites (expressions, ids, flags: what it hands hyperscan) are read as it loads them from
the compile cache or compiles them. The texts are the bytes the plugin scans for each
message ``mailwarden bench`` generates (seed 1), recorded while it scans them. Then, per
database (body, rawbody, full, uri, headers), the same bytes are scanned by

  wheel            the plugin's database through the ``hyperscan`` package, no callback;
  wheel+py         the same with a Python callback collecting the ids (as the plugin does);
  sys              the same expressions compiled by the system library for this host,
                   ``hs_scan`` (dispatched), no callback; ``sys+c`` with a C callback that
                   counts (built here with cc) and ``sys+py`` with a cffi Python callback;
  sys-generic/...  compiled for no CPU feature and scanned by each code path's own entry
                   point: the code path alone, one database.

Each variant's CPU time (``time.thread_time``) over every message, rounds interleaved in a
rotating order; medians per message. The distinct ids and match events per message must
be the same for every variant that reports them (printed as a check). Compiling the stock
set with the system library takes 13-18 s of CPU for body (1 s the others), twice (host and
generic): those databases are kept in ``--cache``. ``--rank N`` then times each expression
alone (the wheel's library) and lists the N costliest per database, with the whole set's time
without the costliest 1, 3, 10 and 30.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cffi
import hyperscan

import mailwarden_antispam
from mailwarden.bench.corpus import generate
from mailwarden_antispam import fastmatch
from mailwarden_sdk import Envelope, ScanContext, parse
from mailwarden_sdk.offload import scanning

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
NAMES = ("body", "rawbody", "full", "uri", "headers")
PATHS = ("core2", "corei7", "avx2", "avx512", "avx512vbmi")
CPU_FEATURES = {"AVX2": 4, "AVX512": 8, "AVX512VBMI": 16}

CDEF = """
typedef int hs_error_t;
typedef struct hs_database hs_database_t;
typedef struct hs_scratch hs_scratch_t;
typedef struct { char *message; int expression; } hs_compile_error_t;
typedef struct {
    unsigned int tune;
    unsigned long long cpu_features;
    unsigned long long reserved1;
    unsigned long long reserved2;
} hs_platform_info_t;
typedef int (*match_event_handler)(unsigned int id, unsigned long long from,
    unsigned long long to, unsigned int flags, void *context);
const char *hs_version(void);
hs_error_t hs_valid_platform(void);
hs_error_t hs_populate_platform(hs_platform_info_t *platform);
hs_error_t hs_compile_multi(const char *const *expressions, const unsigned int *flags,
    const unsigned int *ids, unsigned int elements, unsigned int mode,
    const hs_platform_info_t *platform, hs_database_t **db, hs_compile_error_t **error);
hs_error_t hs_free_compile_error(hs_compile_error_t *error);
hs_error_t hs_free_database(hs_database_t *db);
hs_error_t hs_database_size(const hs_database_t *database, size_t *database_size);
hs_error_t hs_database_info(const hs_database_t *database, char **info);
hs_error_t hs_serialize_database(const hs_database_t *db, char **bytes, size_t *length);
hs_error_t hs_deserialize_database(const char *bytes, size_t length, hs_database_t **db);
hs_error_t hs_alloc_scratch(const hs_database_t *db, hs_scratch_t **scratch);
hs_error_t hs_scan(const hs_database_t *db, const char *data, unsigned int length,
    unsigned int flags, hs_scratch_t *scratch, match_event_handler onEvent, void *context);
void free(void *ptr);
"""
# hs_scan's signature, once per code path of a FAT_RUNTIME build.
CDEF += "".join(
    f"hs_error_t {path}_hs_scan(const hs_database_t *db, const char *data, unsigned int length,"
    " unsigned int flags, hs_scratch_t *scratch, match_event_handler onEvent, void *context);\n"
    for path in PATHS
)
CDEF += "int mw_count(unsigned int, unsigned long long, unsigned long long, unsigned int, void *);"

# The C callback: counts events and marks each id seen (the context: a count, then a byte per id).
COUNTER_C = """
int mw_count(unsigned int id, unsigned long long from, unsigned long long to,
             unsigned int flags, void *context) {
    (void)from; (void)to; (void)flags;
    unsigned long long *events = context;
    ++*events;
    ((unsigned char *)(events + 1))[id] = 1;
    return 0;
}
"""

Scan = Callable[[bytes], Any]


class System:
    """The system library through cffi's ABI mode (no build step)."""

    def __init__(self, lib_path: str, workdir: Path) -> None:
        self.ffi = cffi.FFI()
        self.ffi.cdef(CDEF)
        self.lib: Any = self.ffi.dlopen(lib_path)
        self.libc: Any = self.ffi.dlopen(None)
        self.counter: Any = None
        source = workdir / "counter.c"
        source.write_text(COUNTER_C)
        shared = workdir / "counter.so"
        try:
            subprocess.run(
                ["cc", "-O2", "-shared", "-fPIC", "-o", str(shared), str(source)], check=True
            )
            self.counter = self.ffi.dlopen(str(shared))
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"no C callback ({exc}): sys+c skipped")

    def check(self, err: int, what: str) -> None:
        if err != 0:
            raise RuntimeError(f"{what}: hyperscan error {err}")

    def version(self) -> str:
        return str(self.ffi.string(self.lib.hs_version()).decode())

    def platform(self, generic: bool) -> Any:
        info = self.ffi.new("hs_platform_info_t *")
        if not generic:
            self.check(self.lib.hs_populate_platform(info), "hs_populate_platform")
        return info

    def compile(
        self, expressions: list[bytes], flags: list[int], ids: list[int], platform: Any
    ) -> Any:
        keep = [self.ffi.new("char[]", e) for e in expressions]
        db = self.ffi.new("hs_database_t **")
        error = self.ffi.new("hs_compile_error_t **")
        err = self.lib.hs_compile_multi(
            self.ffi.new("char *[]", keep),
            self.ffi.new("unsigned int[]", flags),
            self.ffi.new("unsigned int[]", ids),
            len(ids),
            1,  # HS_MODE_BLOCK
            platform,
            db,
            error,
        )
        if err != 0:
            message = self.ffi.string(error[0].message).decode()
            self.lib.hs_free_compile_error(error[0])
            raise RuntimeError(f"hs_compile_multi: {message}")
        return db[0]

    def serialize(self, db: Any) -> bytes:
        out, length = self.ffi.new("char **"), self.ffi.new("size_t *")
        self.check(self.lib.hs_serialize_database(db, out, length), "hs_serialize_database")
        blob = bytes(self.ffi.buffer(out[0], length[0]))
        self.libc.free(out[0])
        return blob

    def deserialize(self, blob: bytes) -> Any:
        db = self.ffi.new("hs_database_t **")
        self.check(self.lib.hs_deserialize_database(blob, len(blob), db), "deserialize")
        return db[0]

    def size(self, db: Any) -> int:
        size = self.ffi.new("size_t *")
        self.check(self.lib.hs_database_size(db, size), "hs_database_size")
        return int(size[0])

    def info(self, db: Any) -> str:
        out = self.ffi.new("char **")
        self.check(self.lib.hs_database_info(db, out), "hs_database_info")
        text = self.ffi.string(out[0]).decode()
        self.libc.free(out[0])
        return str(text)

    def scratch(self, db: Any) -> Any:
        space = self.ffi.new("hs_scratch_t **")
        self.check(self.lib.hs_alloc_scratch(db, space), "hs_alloc_scratch")
        return space[0]


def _capture_chosen() -> dict[int, dict[int, tuple[Any, bool]]]:
    """Per PatternSet (by id), the rewrite it gave hyperscan for each pattern index and
    whether in prefilter mode: read where the set loads its cache entry or stores one."""
    chosen: dict[int, dict[int, tuple[Any, bool]]] = {}
    load, store = fastmatch.PatternSet._load, fastmatch.PatternSet._store

    def loading(self: Any, cache: Any, key: str, candidates: Any) -> Any:
        out = load(self, cache, key, candidates)
        if out is not None:
            chosen[id(self)] = out
        return out

    def storing(self: Any, cache: Any, key: str, candidates: Any, picked: Any) -> None:
        chosen[id(self)] = picked
        store(self, cache, key, candidates, picked)

    patched: Any = fastmatch.PatternSet  # replaced methods, for this process only
    patched._load = loading
    patched._store = storing
    return chosen


async def _record(rule_files: list[str], messages: list[bytes]) -> tuple[Any, list[Any]]:
    """The plugin's pattern sets by name and, per message, the bytes each one scanned."""
    chosen = _capture_chosen()
    texts: list[dict[str, list[bytes]]] = []
    current: dict[int, list[bytes]] = {}
    original = fastmatch.PatternSet._scan

    def recording(self: Any, data: bytes, ends: Any = None) -> set[int]:
        if data and self._db is not None:
            current.setdefault(id(self), []).append(data)
        return original(self, data, ends)

    with tempfile.TemporaryDirectory(prefix="mailwarden-bench-hs-") as tmp:
        plugin = mailwarden_antispam.AntispamPlugin()
        plugin.configure(
            mailwarden_antispam.AntispamConfig(
                authentication=False, dns_servers=["127.0.0.1"], rule_files=rule_files
            ),
            Path(tmp),
        )
        plugin.rules.wait_ready()
        matching = plugin.rules._matching
        sets = {name: matching.fast[name][0] for name in NAMES if name in matching.fast}
        # The rule behind each pattern index (for --rank).
        names = {n: [r.name for r in matching.fast[n][1]] for n in sets}
        if matching.headers is not None:
            sets["headers"] = matching.headers.patterns
            names["headers"] = [r.name for r in matching.headers.rules]
        patched: Any = fastmatch.PatternSet
        patched._scan = recording
        try:
            for raw in messages:
                current.clear()
                ctx = ScanContext(ENVELOPE, parse(raw))
                with scanning(ctx.message):
                    await plugin.mailwarden_scan(ctx)
                texts.append(
                    {name: list(current.get(id(s), [])) for name, s in sets.items() if s.active}
                )
        finally:
            patched._scan = original
            if plugin.bayes is not None:
                plugin.bayes.close()
            if plugin.fuzzy is not None:
                plugin.fuzzy.close()
    found = {
        name: (s, chosen[id(s)], names[name])
        for name, s in sets.items()
        if s.active and id(s) in chosen
    }
    return found, texts


def _inputs(picked: dict[int, tuple[Any, bool]]) -> tuple[list[bytes], list[int], list[int]]:
    """What fastmatch._compile hands hyperscan for these choices."""
    ids = list(picked)
    expressions = [picked[i][0].expression for i in ids]
    flags = [picked[i][0].flags | (hyperscan.HS_FLAG_PREFILTER if picked[i][1] else 0) for i in ids]
    return expressions, flags, ids


def _system_db(
    system: System, cache: Path, name: str, inputs: Any, generic: bool
) -> tuple[Any, float | None]:
    """The system library's database (from ``cache`` when compiled before) and the CPU
    seconds its compile took (None: loaded)."""
    expressions, flags, ids = inputs
    key = hashlib.sha256(
        repr((system.version(), generic, expressions, flags, ids)).encode()
    ).hexdigest()[:24]
    path = cache / f"{name}-{'generic' if generic else 'host'}-{key}.hsdb"
    if path.exists():
        return system.deserialize(path.read_bytes()), None
    began = time.process_time()
    db = system.compile(expressions, flags, ids, system.platform(generic))
    took = time.process_time() - began
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(system.serialize(db))
    return db, took


def _variants(
    system: System, wheel_db: Any, host_db: Any, generic_db: Any, size: int
) -> dict[str, tuple[Scan, Callable[[], tuple[set[int], int]] | None]]:
    """Per variant, a scan of one text, and (for those that report) what the last scan found."""
    ffi, lib = system.ffi, system.lib
    wheel_scratch = hyperscan.Scratch(wheel_db)
    host_scratch = system.scratch(host_db)
    generic_scratch = system.scratch(generic_db)
    seen: set[int] = set()
    events = [0]

    def wheel(data: bytes) -> None:
        wheel_db.scan(data, scratch=wheel_scratch)

    def on_wheel(pid: int, _start: int, _end: int, _flags: int, _ctx: object) -> None:
        seen.add(pid)
        events[0] += 1

    def wheel_py(data: bytes) -> None:
        wheel_db.scan(data, match_event_handler=on_wheel, scratch=wheel_scratch)

    null = ffi.NULL

    def sys_none(data: bytes) -> None:
        lib.hs_scan(host_db, data, len(data), 0, host_scratch, null, null)

    def on_sys_py(pid: int, _start: int, _end: int, _flags: int, _ctx: Any) -> int:
        seen.add(pid)
        events[0] += 1
        return 0

    on_sys = ffi.callback("match_event_handler", on_sys_py)

    def sys_py(data: bytes) -> None:
        lib.hs_scan(host_db, data, len(data), 0, host_scratch, on_sys, null)

    def python_found() -> tuple[set[int], int]:
        out = (set(seen), events[0])
        seen.clear()
        events[0] = 0
        return out

    out: dict[str, tuple[Scan, Callable[[], tuple[set[int], int]] | None]] = {
        "wheel": (wheel, None),
        "wheel+py": (wheel_py, python_found),
        "sys": (sys_none, None),
        "sys+py": (sys_py, python_found),
    }
    if system.counter is not None:
        counts = ffi.new("unsigned char[]", 8 + size + 1)
        counter = system.counter.mw_count

        def sys_c(data: bytes) -> None:
            lib.hs_scan(host_db, data, len(data), 0, host_scratch, counter, counts)

        def c_found() -> tuple[set[int], int]:
            raw = bytes(ffi.buffer(counts))
            ids = {i for i, b in enumerate(raw[8:]) if b}
            ffi.memmove(counts, b"\0" * len(raw), len(raw))
            return ids, int.from_bytes(raw[:8], "little")

        out["sys+c"] = (sys_c, c_found)
    for path in PATHS:
        try:
            entry = getattr(lib, f"{path}_hs_scan")
        except AttributeError:  # a build without this code path (or not FAT_RUNTIME)
            continue

        def by_path(data: bytes, _entry: Any = entry, _path: str = path) -> None:
            err = _entry(generic_db, data, len(data), 0, generic_scratch, null, null)
            if err != 0:
                raise RuntimeError(f"{_path}_hs_scan: error {err}")

        out[f"sys-generic/{path}"] = (by_path, None)
    return out


def _check_matches(variants: Any, texts: list[list[bytes]]) -> dict[str, tuple[int, int]]:
    """Per reporting variant, (distinct ids summed over messages, events); every variant's
    per-message answer must equal the first's."""
    totals: dict[str, tuple[int, int]] = {}
    reference: list[tuple[set[int], int]] | None = None
    for name, (scan, found) in variants.items():
        if found is None:
            continue
        answers = []
        for message in texts:
            found()
            ids: set[int] = set()
            count = 0
            for data in message:
                scan(data)
                got, events = found()
                ids |= got
                count += events
            answers.append((ids, count))
        if reference is None:
            reference = answers
        elif answers != reference:
            bad = sum(a != b for a, b in zip(answers, reference, strict=True))
            raise SystemExit(f"{name}: matches differ from the first variant's in {bad} messages")
        totals[name] = (sum(len(a[0]) for a in answers), sum(a[1] for a in answers))
    return totals


def _time(variants: Any, texts: list[list[bytes]], rounds: int) -> dict[str, list[float]]:
    names = list(variants)
    per: dict[str, list[float]] = {n: [] for n in names}
    for round_ in range(rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            scan = variants[name][0]
            began = time.thread_time()
            for message in texts:
                for data in message:
                    scan(data)
            per[name].append((time.thread_time() - began) / len(texts) * 1e6)
    return per


def _wheel_db(expressions: list[bytes], flags: list[int], ids: list[int]) -> Any:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=expressions, ids=ids, elements=len(ids), flags=flags)
    return db


def _scan_cpu(db: Any, texts: list[list[bytes]], rounds: int) -> float:
    """Median CPU us a message of ``db``'s scans of ``texts`` (wheel, no callback)."""
    scratch = hyperscan.Scratch(db)
    runs = []
    for _round in range(rounds):
        began = time.thread_time()
        for message in texts:
            for data in message:
                db.scan(data, scratch=scratch)
        runs.append((time.thread_time() - began) / len(texts) * 1e6)
    return statistics.median(runs)


def _system_scan_cpu(
    system: System,
    expressions: list[bytes],
    flags: list[int],
    texts: list[list[bytes]],
    rounds: int,
) -> float:
    """As :func:`_scan_cpu`, compiled and scanned by the system library (for this host)."""
    db = system.compile(expressions, flags, list(range(len(expressions))), system.platform(False))
    scratch = system.scratch(db)
    scan, null = system.lib.hs_scan, system.ffi.NULL
    runs = []
    for _round in range(rounds):
        began = time.thread_time()
        for message in texts:
            for data in message:
                scan(db, data, len(data), 0, scratch, null, null)
        runs.append((time.thread_time() - began) / len(texts) * 1e6)
    return statistics.median(runs)


def _rank(
    system: System,
    rules: list[str],
    inputs: Any,
    texts: list[list[bytes]],
    top: int,
    rounds: int,
) -> None:
    """Each expression alone (the wheel's library): its scan CPU a message, the costliest
    first (the system library's figure beside them); then the whole set without the
    costliest k, to see how much of the set's time they hold (solo costs do not add up to
    the set's: literals are shared)."""
    expressions, flags, ids = inputs
    empty = _scan_cpu(_wheel_db([b"zqxjzqxj"], [0], [0]), texts, rounds)
    system_empty = _system_scan_cpu(system, [b"zqxjzqxj"], [0], texts, rounds)
    solo = []
    for at, pid in enumerate(ids):
        try:
            db = _wheel_db([expressions[at]], [flags[at]], [pid])
        except hyperscan.error:
            continue
        solo.append((_scan_cpu(db, texts, rounds) - empty, at))
    solo.sort(reverse=True)
    print(
        f"  alone, less a one-literal database's {empty:.2f} / {system_empty:.2f} us/msg"
        " (no callback), wheel / system:"
    )
    for cost, at in solo[:top]:
        loose = " (prefilter mode)" if flags[at] & hyperscan.HS_FLAG_PREFILTER else ""
        other = _system_scan_cpu(system, [expressions[at]], [flags[at]], texts, rounds)
        print(f"    {cost:8.2f} / {other - system_empty:8.2f} us  {rules[ids[at]]}{loose}")
    whole = _scan_cpu(_wheel_db(expressions, flags, ids), texts, rounds)
    print(f"  the whole set {whole:.2f} us/msg; sum of all alone {sum(c for c, _ in solo):.2f}")
    for k in (k for k in (1, 3, 10, 30) if k < len(ids)):
        drop = {at for _cost, at in solo[:k]}
        kept = [at for at in range(len(ids)) if at not in drop]
        db = _wheel_db(
            [expressions[a] for a in kept], [flags[a] for a in kept], [ids[a] for a in kept]
        )
        print(f"  without the costliest {k:2}: {_scan_cpu(db, texts, rounds):.2f} us/msg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--spam-rules", action="append", default=[])
    parser.add_argument("--lib", default="libhs.so.5", help="the system hyperscan library")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "mailwarden"
        / "hs-build-bench",
        help="where the system library's compiled databases are kept",
    )
    parser.add_argument("--only", action="append", choices=NAMES, help="these databases only")
    parser.add_argument(
        "--rank",
        type=int,
        default=0,
        help="also time each expression alone (wheel) and list the N costliest per database",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # stock rules' "[[" classes
    print(f"load average at start: {os.getloadavg()}")
    messages = generate(args.messages, 1)
    sets, texts = asyncio.run(_record(args.spam_rules, messages))
    with tempfile.TemporaryDirectory(prefix="mailwarden-bench-hs-") as tmp:
        system = System(args.lib, Path(tmp))
        print(f"wheel: hyperscan {getattr(hyperscan, '__version__', '?')}")
        print(
            f"system: {args.lib} {system.version()}; hs_valid_platform "
            f"{system.lib.hs_valid_platform()}; host platform features "
            f"{_features(system.platform(False).cpu_features)}"
        )
        for name in args.only or NAMES:
            if name not in sets:
                continue
            patterns, picked, rules = sets[name]
            inputs = _inputs(picked)
            wheel_db = patterns._db
            host_db, host_took = _system_db(system, args.cache, name, inputs, generic=False)
            generic_db, generic_took = _system_db(system, args.cache, name, inputs, generic=True)
            per_message = [m.get(name, []) for m in texts]
            scans = sum(len(m) for m in per_message)
            size = sum(len(d) for m in per_message for d in m) / len(per_message)
            print(
                f"\n== {name}: {len(inputs[2])} expressions; {scans / len(per_message):.2f} scans"
                f" and {size:.0f} bytes per message"
            )
            print(
                f"wheel  size {len(hyperscan.dumpb(wheel_db))} (serialized)"
                f"  info {wheel_db.info().decode()}"
            )
            for label, db, took in (
                ("host", host_db, host_took),
                ("generic", generic_db, generic_took),
            ):
                compiled = "cached" if took is None else f"compiled in {took:.1f} s cpu"
                print(f"sys {label}  size {system.size(db)}  info {system.info(db)}  ({compiled})")
            variants = _variants(system, wheel_db, host_db, generic_db, max(inputs[2]))
            totals = _check_matches(variants, per_message)
            print(
                "matches (distinct ids summed over messages, events): "
                + "; ".join(f"{n} {t[0]} / {t[1]}" for n, t in totals.items())
                + " - equal per message"
            )
            timings = _time(variants, per_message, args.rounds)
            base = statistics.median(timings["wheel"])
            for variant, values in timings.items():
                median = statistics.median(values)
                print(
                    f"  {variant:24} us/msg median {median:8.2f}  (min {min(values):8.2f},"
                    f" max {max(values):8.2f})  vs wheel {median / base:.2f}"
                )
            if args.rank:
                _rank(system, rules, inputs, per_message, args.rank, 3)
    print(f"\nload average at end: {os.getloadavg()}")


def _features(bits: int) -> str:
    return " ".join(n for n, b in CPU_FEATURES.items() if bits & b) or "none"


if __name__ == "__main__":
    main()

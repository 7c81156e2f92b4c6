"""Multi-pattern signature matching: mailwarden's native engine against its peers, one run.

A seeded mixed buffer (a third English-like text, a third base64, a third random bytes) with
signature instances planted in it is scanned by every engine with the same signatures:
1k, 10k and 100k literals of 8-64 bytes and a set with wildcards (``??``, ``{n-m}``, ``*``,
``(aa|bb)``, ``!(aa|bb)``, nibbles). Each (engine, set) runs in its own process so that its
peak RSS is its own (the buffer is included, as for every engine). Scan speed is the median of
repeats; ratios are taken within this run only. See README.md.

    python benchmarks/match/bench_match.py [--mb 64] [--repeats 3] [--sets 1000,10000,100000,wild]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SEED = 20261128
WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an have not which "
    "mail message sender invoice payment account please attached document report meeting "
    "server network security update password customer order shipping delivery"
).split()
HITS = 2000  # instances planted per set


def make_buffer(size: int, rng: random.Random) -> bytearray:
    third = size // 3
    text = bytearray()
    while len(text) < third:
        text += " ".join(rng.choice(WORDS) for _ in range(64)).encode() + b".\n"
    import base64

    b64 = bytearray(base64.encodebytes(rng.randbytes(third * 3 // 4 + 3)))
    rest = rng.randbytes(size - third - third)
    return bytearray(text[:third]) + b64[:third] + bytearray(rest)


def literal(rng: random.Random) -> bytes:
    n = rng.randint(8, 64)
    if rng.random() < 0.5:
        return rng.randbytes(n)
    return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 ._-") for _ in range(n))


def literal_set(n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        lit = literal(rng)
        out.append({"ndb": lit.hex(), "hs": _hs(lit), "yara": lit.hex(" "), "sample": lit.hex()})
    return out


def _hs(data: bytes) -> str:
    return "".join(f"\\x{c:02x}" for c in data)


def wildcard_sig(rng: random.Random) -> dict[str, Any]:
    """One signature: fixed parts of 8-16 bytes joined by wildcard constructs."""
    ndb, hs, yara, sample = [], [], [], bytearray()

    def fixed() -> None:
        lit = rng.randbytes(rng.randint(8, 16))
        ndb.append(lit.hex())
        hs.append(_hs(lit))
        yara.append(lit.hex(" "))
        sample.extend(lit)

    fixed()
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["any", "range", "star", "alt", "neg", "nibble"])
        if kind == "any":
            ndb.append("??")
            hs.append(".")
            yara.append("??")
            sample.append(rng.randrange(256))
        elif kind == "range":
            lo = rng.randint(0, 4)
            hi = lo + rng.randint(1, 8)
            ndb.append(f"{{{lo}-{hi}}}")
            hs.append(f".{{{lo},{hi}}}")
            yara.append(f"[{lo}-{hi}]")
            sample.extend(rng.randbytes(rng.randint(lo, hi)))
        elif kind == "star":
            ndb.append("*")
            hs.append(".*")
            yara.append("[-]")
            sample.extend(rng.randbytes(rng.randint(0, 20)))
        elif kind in ("alt", "neg"):
            a, b = rng.randbytes(1), rng.randbytes(1)
            while b == a:
                b = rng.randbytes(1)
            if kind == "alt":
                ndb.append(f"({a.hex()}|{b.hex()})")
                hs.append(f"(?:{_hs(a)}|{_hs(b)})")
                yara.append(f"({a.hex()}|{b.hex()})")
                sample.extend(rng.choice([a, b]))
            else:
                ndb.append(f"!({a.hex()}|{b.hex()})")
                hs.append(f"[^{_hs(a)}{_hs(b)}]")
                yara.append("??")  # YARA has no negated multi-choice byte: looser here
                c = rng.randbytes(1)
                while c in (a, b):
                    c = rng.randbytes(1)
                sample.extend(c)
        else:
            hi = rng.randrange(16)
            ndb.append(f"{hi:x}?")
            hs.append(f"[\\x{hi << 4:02x}-\\x{(hi << 4) | 15:02x}]")
            yara.append(f"{hi:x}?")
            sample.append((hi << 4) | rng.randrange(16))
        fixed()
    return {"ndb": "".join(ndb), "hs": "".join(hs), "yara": " ".join(yara), "sample": sample.hex()}


def make_sets(names: list[str], size: int) -> tuple[bytearray, dict[str, list[dict[str, Any]]]]:
    rng = random.Random(SEED)
    buf = make_buffer(size, rng)
    sets: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        srng = random.Random(f"{SEED}-{name}")
        sigs = (
            [wildcard_sig(srng) for _ in range(1000)]
            if name == "wild"
            else literal_set(int(name), srng)
        )
        sets[name] = sigs
    return buf, sets


def plant(buf: bytearray, sigs: list[dict[str, Any]], seed: str) -> bytearray:
    rng = random.Random(seed)
    out = bytearray(buf)
    for _ in range(HITS):
        sample = bytes.fromhex(rng.choice(sigs)["sample"])
        at = rng.randrange(0, len(out) - len(sample))
        out[at : at + len(sample)] = sample
    return out


# ---------------------------------------------------------------- engines (child process)


def hwm_kb(pid: int) -> int:
    """Peak RSS of a process (VmHWM). Not ru_maxrss: Linux carries that across fork and exec,
    so a child would report the benchmark driver's buffers as its own."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_mailwarden(sigs: list[dict[str, Any]], buf: bytes, repeats: int, chunk: int) -> dict:
    from mailwarden_native import SignatureCompiler, SignatureDB

    t0 = time.perf_counter()
    comp = SignatureCompiler()
    for s in sigs:
        comp.add(s["ndb"])
    blob = comp.build()
    path = Path(tempfile.mkdtemp()) / "bench.mwsig"
    SignatureDB.write(blob, path)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    db = SignatureDB.load(path)
    open_s = time.perf_counter() - t0
    times, ids = [], set()
    for _ in range(repeats):
        t0 = time.perf_counter()
        if chunk:
            sc = db.scanner()
            view = memoryview(buf)
            for i in range(0, len(buf), chunk):
                sc.feed(view[i : i + chunk])
            hits = sc.finish()
        else:
            hits = db.scan(buf)
        times.append(time.perf_counter() - t0)
        ids = {h.sig_id for h in hits}
    shutil.rmtree(path.parent)
    return {
        "compile_s": compile_s,
        "open_s": open_s,
        "times": times,
        "ids": sorted(ids),
        "db_bytes": db.info["bytes"],
    }


def _collector(found: set[int]) -> Any:
    def on_match(sid: int, start: int, end: int, flags: int, ctx: Any) -> None:
        found.add(sid)

    return on_match


def run_hyperscan(sigs: list[dict[str, Any]], buf: bytes, repeats: int) -> dict:
    import hyperscan

    t0 = time.perf_counter()
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    flags = hyperscan.HS_FLAG_DOTALL | hyperscan.HS_FLAG_SINGLEMATCH
    db.compile(
        expressions=[s["hs"].encode() for s in sigs],
        ids=list(range(len(sigs))),
        elements=len(sigs),
        flags=[flags] * len(sigs),
    )
    compile_s = time.perf_counter() - t0
    times, ids = [], set()
    for _ in range(repeats):
        found: set[int] = set()
        t0 = time.perf_counter()
        db.scan(bytes(buf), match_event_handler=_collector(found))
        times.append(time.perf_counter() - t0)
        ids = found
    return {"compile_s": compile_s, "times": times, "ids": sorted(ids)}


def run_yara(sigs: list[dict[str, Any]], buf: bytes, repeats: int) -> dict:
    import yara

    src = "\n".join(
        f"rule s{i} {{ strings: $a = {{ {s['yara']} }} condition: $a }}" for i, s in enumerate(sigs)
    )
    t0 = time.perf_counter()
    rules = yara.compile(source=src)
    compile_s = time.perf_counter() - t0
    times, ids = [], set()
    for _ in range(repeats):
        t0 = time.perf_counter()
        matches = rules.match(data=bytes(buf))
        times.append(time.perf_counter() - t0)
        ids = {int(m.rule[1:]) for m in matches}
    return {"compile_s": compile_s, "times": times, "ids": sorted(ids)}


def run_clamscan(sigs: list[dict[str, Any]], buf: bytes, repeats: int) -> dict:
    clamscan = shutil.which("clamscan")
    if not clamscan:
        raise RuntimeError("clamscan not installed (apt-get install clamav)")
    work = Path(tempfile.mkdtemp())
    db = work / "sigs.ndb"
    db.write_text("".join(f"S{i}:0:*:{s['ndb']}\n" for i, s in enumerate(sigs)))
    data = work / "buffer.bin"
    data.write_bytes(buf)
    empty = work / "empty.bin"
    empty.write_bytes(b"")
    base = [
        clamscan,
        "--no-summary",
        f"--database={db}",
        "--allmatch",
        "--max-filesize=2000M",
        "--max-scansize=2000M",
        "--max-recursion=1",
        "--infected",
    ]

    peak = 0

    def timed(target: Path) -> tuple[float, str]:
        nonlocal peak
        out = work / "out.txt"
        t0 = time.perf_counter()
        with out.open("w") as handle:
            proc = subprocess.Popen([*base, str(target)], stdout=handle)
            while proc.poll() is None:
                peak = max(peak, hwm_kb(proc.pid))
                time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        return elapsed, out.read_text()

    load, _ = timed(empty)  # DB load + start, subtracted from each scan
    times, ids = [], set()
    for _ in range(repeats):
        elapsed, out = timed(data)
        times.append(max(elapsed - load, 1e-9))
        ids = {
            int(line.split(": ", 1)[1].split(".")[0][1:])
            for line in out.splitlines()
            if line.endswith(" FOUND")
        }
    shutil.rmtree(work)
    return {"compile_s": load, "times": times, "ids": sorted(ids), "peak_kb": peak}


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    buf = (work / f"buf-{args.set}.bin").read_bytes()
    sigs = json.loads((work / f"sigs-{args.set}.json").read_text())
    engine = args.child
    if engine == "mailwarden":
        res = run_mailwarden(sigs, buf, args.repeats, 0)
    elif engine == "mailwarden_16k":
        res = run_mailwarden(sigs, buf, args.repeats, 16384)
    elif engine == "hyperscan":
        res = run_hyperscan(sigs, buf, args.repeats)
    elif engine == "yara":
        res = run_yara(sigs, buf, args.repeats)
    else:
        res = run_clamscan(sigs, buf, max(1, args.repeats // 3))
    # clamscan is its own process (peak sampled while it runs); the others run in this one.
    res["rss_mb"] = res.pop("peak_kb", 0) / 1024 or hwm_kb(os.getpid()) / 1024
    print(json.dumps(res))


# ---------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mb", type=int, default=64, help="buffer size in MiB (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="scans per engine (median reported)")
    ap.add_argument("--sets", default="1000,10000,100000,wild")
    ap.add_argument(
        "--engines",
        default="mailwarden,mailwarden_16k,hyperscan,yara,clamscan",
        help="comma-separated; clamscan runs repeats//3 (at least 1) scans",
    )
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--set", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    names = args.sets.split(",")
    size = args.mb << 20
    work = Path(tempfile.mkdtemp(prefix="mw-bench-match-"))
    try:
        base, sets = make_sets(names, size)
        for name, sigs in sets.items():
            (work / f"sigs-{name}.json").write_text(json.dumps(sigs))
            (work / f"buf-{name}.bin").write_bytes(plant(base, sigs, f"{SEED}-plant-{name}"))
        results = []
        for name in names:
            for engine in args.engines.split(","):
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    engine,
                    "--set",
                    name,
                    "--work",
                    str(work),
                    "--repeats",
                    str(args.repeats),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    err = proc.stderr.strip().splitlines()[-1:] or ["?"]
                    print(f"{engine} {name}: failed: {err[0]}", file=sys.stderr)
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                res.update(engine=engine, set=name, mbps=[size / 1e6 / t for t in res["times"]])
                results.append(res)
                med = statistics.median(res["mbps"])
                print(
                    f"  {engine:15} {name:>6}: {med:9.1f} MB/s  compile {res['compile_s']:.3f} s"
                    f"  rss {res['rss_mb']:.0f} MB  sigs hit {len(res['ids'])}",
                    file=sys.stderr,
                    flush=True,
                )
        report(results, size, args)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: list[dict], size: int, args: argparse.Namespace) -> None:
    by = {(r["engine"], r["set"]): r for r in results}
    print(
        f"\n64 MB-class mixed buffer: {size >> 20} MiB, {HITS} planted instances per set, "
        f"median of {args.repeats} scans (clamscan: {max(1, args.repeats // 3)}), one core\n"
    )
    print(
        "| engine | set | compile/load s | scan MB/s median [min-max] | mailwarden x | "
        "peak RSS MB | sigs hit | same ids as mailwarden |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        mw = by.get(("mailwarden", r["set"]))
        med = statistics.median(r["mbps"])
        ratio = f"{statistics.median(mw['mbps']) / med:.2f}x" if mw else "-"
        same = (
            "-"
            if not mw
            else (
                "yes"
                if r["ids"] == mw["ids"]
                else f"no ({len(set(r['ids']) ^ set(mw['ids']))} differ)"
            )
        )
        print(
            f"| {r['engine']} | {r['set']} | {r['compile_s']:.3f} | {med:.1f} "
            f"[{min(r['mbps']):.1f}-{max(r['mbps']):.1f}] | {ratio} | {r['rss_mb']:.0f} | "
            f"{len(r['ids'])} | {same} |"
        )
    print("\nTargets: mailwarden >= 0.5x hyperscan at 10k and 100k, >= 20x clamscan.")
    for name in sorted({r["set"] for r in results}):
        mw = by.get(("mailwarden", name))
        if not mw:
            continue
        line = [f"set {name}:"]
        for peer in ("hyperscan", "yara", "clamscan"):
            other = by.get((peer, name))
            if other:
                ratio = statistics.median(mw["mbps"]) / statistics.median(other["mbps"])
                line.append(f"{ratio:.2f}x {peer}")
        print(
            " ".join(line) + f" (db {mw.get('db_bytes', 0) / 1e6:.1f} MB, "
            f"open {mw.get('open_s', 0) * 1000:.1f} ms)"
        )


if __name__ == "__main__":
    main()

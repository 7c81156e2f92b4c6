"""Mail flow through Postfix and mailwarden, against Postfix alone and peer milters, in one run.

Postfix's ``smtp-source`` sends the same load (``--messages`` of ``--size`` bytes over
``--sessions`` sessions) to each of:

  (a)  Postfix alone            -> smtp-sink      (run first and last; the baseline is the mean)
  (b)  Postfix + mailwarden milter, antivirus and antispam on (``smtpd_milters``)
  (b0) Postfix + mailwarden milter, every detector off: the protocol and the pipeline alone
  (c)  mailwarden SMTP gateway (relay mode, spool fsynced before each 250)
  (c0) the same gateway with every detector off: the protocol, the spool and the relay
  (d)  Postfix + mailwarden after-queue content filter (re-injection with XFORWARD)
  (e)  Postfix + rspamd's milter (its proxy in milter mode, scanning itself), if installed
  (f)  Postfix + OpenDKIM verifying (a C milter on libmilter), if installed

For each it reports the accept rate (smtp-source finished: every message got its 250), the
end-to-end rate (the sink holds every message), both as ratios to (a), and the CPU time
``mailwarden serve`` spent per message (and of it the system part) and its context switches
per message; beside it the CPU per message of Postfix's own processes in every row, and of
the peer milter's processes in (e) and (f), so that what each filter costs can be set against
what the MTA itself costs. Antispam runs without DNS (as ``mailwarden bench`` runs
it), so the machine's resolver is neither asked nor waited on. Everything shares the machine's
cores, so the figures are only comparable within one run.

    .venv/bin/python benchmarks/smtp/bench_smtp.py --messages 1000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mailwarden.bench.peers import opendkim_milter, rspamd_milter  # noqa: E402
from mailwarden.bench.run import OFFLINE_ANTISPAM  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.test_gateway_relay import Serve, Sink, port_open, wait_until  # noqa: E402
from tests.services.postfix import Postfix  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")
_ALL_DETECTORS_OFF = '[detectors]\ndisabled = ["antivirus", "antispam", "reputation", "sandbox"]\n'


def _count(sink: Sink) -> int:
    return sum(1 for p in sink.directory.iterdir() if p.is_file())


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo += [int(c) for c in children]
    return found


def _cpu_seconds(pids: list[int], field: int | None = None, reaped: bool = False) -> float:
    """User and system CPU of the processes (all their threads), in seconds; with ``field``
    0 only the user time, 1 only the system time; with ``reaped`` also the CPU of the
    children they have reaped."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user, system = int(fields[11]), int(fields[12])
            total += (user, system)[field] if field is not None else user + system
            total += int(fields[13]) + int(fields[14]) if reaped else 0
    return total / _TICK


def _tree_cpu_seconds(root: int) -> float:
    """CPU of ``root`` and every process under it, with the children they reaped (Postfix's
    master and rspamd's main process restart their workers)."""
    return _cpu_seconds(_tree(root), reaped=True)


def _listener(port: int) -> int | None:
    """The top process of the program that listens on 127.0.0.1:``port`` (for rspamd, its
    main process rather than the proxy worker that holds the socket), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return _program_root(int(pid))
    return None


def _program_root(pid: int) -> int:
    def stat(p: int) -> tuple[str, int]:
        name, rest = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)
        return name.split("(", 1)[1][:6], int(rest.split()[1])

    with contextlib.suppress(OSError):
        name, parent = stat(pid)
        while parent > 1 and stat(parent)[0] == name:
            pid, parent = parent, stat(parent)[1]
    return pid


def _loop_seconds(pid: int) -> float:
    """User and system CPU of the process's main thread (the event loop's), in seconds."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    return 0.0


def _tasks(pids: list[int]) -> dict[int, tuple[int, int]]:
    """Per thread of the processes: (user + system CPU in ticks, context switches)."""
    found: dict[int, tuple[int, int]] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    base = f"/proc/{pid}/task/{task}"
                    fields = Path(f"{base}/stat").read_text().rsplit(")", 1)[1].split()
                    switches = sum(
                        int(line.split()[1])
                        for line in Path(f"{base}/status").read_text().splitlines()
                        if "ctxt_switches:" in line
                    )
                    found[int(task)] = (int(fields[11]) + int(fields[12]), switches)
    return found


def _thread_names(pid: int) -> dict[int, str]:
    """Thread id -> Python thread name (from ``py-spy dump``; digits dropped, so a pool's
    threads count together); empty without py-spy."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    try:
        out = subprocess.run(
            [py_spy, "dump", "--pid", str(pid), "--nonblocking"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names = {}
    for line in out.splitlines():
        if line.startswith("Thread ") and '"' in line:
            tid = line.split()[1]
            if tid.isdigit():
                names[int(tid)] = line.split('"')[1].rstrip("_0123456789") or "?"
    return names


def _comm(pid: int, tid: int) -> str:
    """A thread's own name (the C core's threads name themselves); "gone" when it ended."""
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "gone"


def _by_thread(
    pid: int, before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> dict[str, tuple[float, float]]:
    """CPU seconds and context switches per thread name between two :func:`_tasks` readings
    (threads that ended meanwhile are not seen; a thread started meanwhile counts whole)."""
    names = _thread_names(pid)
    out: dict[str, tuple[float, float]] = {}
    for tid, (ticks, switches) in after.items():
        ticks0, switches0 = before.get(tid, (0, 0))
        name = names.get(tid) or _comm(pid, tid)
        cpu, sw = out.get(name, (0.0, 0.0))
        out[name] = (cpu + (ticks - ticks0) / _TICK, sw + switches - switches0)
    return out


def _switches(pids: list[int]) -> int:
    """Voluntary and involuntary context switches of every thread of the processes.

    /proc/PID/status counts only the main thread; the threads' counts are in task/*/status.
    """
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                        if "ctxt_switches:" in line:
                            total += int(line.split()[1])
    return total


@contextlib.contextmanager
def _pythonpath(core: Path) -> Iterator[None]:
    """``mailwarden serve`` started inside imports the package under ``core`` (PYTHONPATH
    comes before the editable install's finder)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(core.resolve())
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def _phase(
    sink: Sink,
    port: int,
    messages: int,
    sessions: int,
    size: int,
    serve: Serve | None,
    profile: Path | None = None,
    threads: dict[str, dict[str, tuple[float, float]]] | None = None,
    tag: str = "",
    mta: int | None = None,
    peer: int | None = None,
) -> dict[str, float]:
    """One row; ``mta`` is Postfix's master PID, ``peer`` a peer milter's main PID."""
    before = _count(sink)
    pids = _tree(serve.process.pid) if serve is not None and serve.process else []
    spy = None
    if profile is not None and pids:
        # Collapsed stacks of the serving process while this phase runs (pip install py-spy).
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pids[0]),
                "--format",
                "raw",
                "--nonblocking",
                "--rate",
                os.environ.get("BENCH_PROFILE_RATE", "250"),
                *(["--gil"] if os.environ.get("BENCH_PROFILE_GIL") else []),
                "--output",
                str(profile),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
    cpu_before, switches_before = _cpu_seconds(pids), _switches(pids)
    system_before = _cpu_seconds(pids, 1)
    loop_before = _loop_seconds(pids[0]) if pids else 0.0
    tasks_before = _tasks(pids) if threads is not None and pids else {}
    others = {"postfix_cpu_ms": mta, "peer_cpu_ms": peer}
    others_before = {k: _tree_cpu_seconds(pid) for k, pid in others.items() if pid}
    began = time.perf_counter()
    subprocess.run(
        [
            "smtp-source",
            "-c",
            "-m",
            str(messages),
            "-s",
            str(sessions),
            "-l",
            str(size),
            "-f",
            "alice@example.org",
            "-t",
            "bob@example.net",
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=1800,
    )
    accepted = time.perf_counter() - began
    wait_until(lambda: _count(sink) - before >= messages, 600, "every message at the sink")
    delivered = time.perf_counter() - began
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    result = {"accept": messages / accepted, "end_to_end": messages / delivered}
    for key, cpu in others_before.items():
        result[key] = (_tree_cpu_seconds(others[key] or 0) - cpu) * 1000 / messages
    if pids:
        result["serve_cpu_ms"] = (_cpu_seconds(pids) - cpu_before) * 1000 / messages
        result["serve_sys_ms"] = (_cpu_seconds(pids, 1) - system_before) * 1000 / messages
        result["serve_loop_ms"] = (_loop_seconds(pids[0]) - loop_before) * 1000 / messages
        result["serve_switches"] = (_switches(pids) - switches_before) / messages
        if threads is not None:
            threads[tag] = _by_thread(pids[0], tasks_before, _tasks(pids))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024, help="message body bytes")
    parser.add_argument("--json", help="also write the figures as JSON to this file")
    parser.add_argument(
        "--modes",
        default="a,b,b0,c,c0,d,e,f",
        help="the rows to run, comma-separated (a is always run, first and last)",
    )
    parser.add_argument(
        "--compare-core",
        type=Path,
        help="also run (b), (b0), (c) and (c0) on the mailwarden package under this core/ "
        "directory (an older checkout): rows (b'), (b0'), (c') and (c0'), for before/after "
        "figures in one run",
    )
    parser.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        help="[gateway] event_loop of the gateways measured (default: the config's default)",
    )
    parser.add_argument(
        "--compare-loop",
        choices=("uvloop", "asyncio"),
        help="also run (b), (b0), (c) and (c0) on gateways with this [gateway] event_loop "
        "(this checkout's code unless --compare-core): rows (b'), (b0'), (c') and (c0')",
    )
    parser.add_argument(
        "--older-after",
        action="store_true",
        help="run each --compare-core row just after its own instead of just before: the "
        "sink's folder grows, so a later row pays a little more for its polling; alternate "
        "the two orders between rounds",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record py-spy collapsed stacks of mailwarden serve per row into this directory",
    )
    parser.add_argument(
        "--threads",
        action="store_true",
        help="also print the serve process's CPU ms and switches per message by thread "
        "(named with py-spy dump)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mailwarden-bench-smtp-"))
    sink = Sink(work / "sink", free_port()).start()
    milter, bare_milter, content_filter = free_port(), free_port(), free_port()
    reinject, smtp, bare_smtp = free_port(), free_port(), free_port()
    common = (
        f'[delivery]\nmode = "relay"\nnext_hop = "127.0.0.1:{sink.port}"\n'
        "queue_scan_interval = 1.0\n[events]\nenabled = false\n" + OFFLINE_ANTISPAM
    )

    def loop_key(name: str | None) -> str:
        return f'[gateway]\nevent_loop = "{name}"\n' if name else ""

    serve = Serve(
        work / "home",
        smtp,
        common
        + loop_key(args.event_loop)
        + f"[milter]\nenabled = true\nport = {milter}\n"
        + f"[content_filter]\nenabled = true\nport = {content_filter}\n"
        + f'reinject = "127.0.0.1:{reinject}"\n',
    )
    bare = Serve(
        work / "bare",
        bare_smtp,
        common
        + loop_key(args.event_loop)
        + f"[milter]\nenabled = true\nport = {bare_milter}\n"
        + _ALL_DETECTORS_OFF,
    )
    # The same two gateways on another checkout's code, for before/after rows in one run:
    # "" with the detectors, "0" without; each serves a milter (b', b0') and SMTP (c', c0').
    other: dict[str, tuple[Serve, int]] = {}
    compare = args.compare_core is not None or args.compare_loop is not None
    if compare:
        for key, extra in (("", ""), ("0", _ALL_DETECTORS_OFF)):
            port = free_port()
            config = common + loop_key(args.compare_loop or args.event_loop)
            config += f"[milter]\nenabled = true\nport = {port}\n" + extra
            other[key] = (Serve(work / f"other-{len(other)}", free_port(), config), port)
    postfix = Postfix(sink.port)
    ports = {name: free_port() for name in ("plain", "milter", "bare", "cf", "rspamd", "dkim")}
    ports |= {f"b{key}'": free_port() for key in other}
    results: dict[str, dict[str, float]] = {}
    by_thread: dict[str, dict[str, tuple[float, float]]] | None = {} if args.threads else None
    skipped: dict[str, str] = {}
    n, s, size = args.messages, args.sessions, args.size
    with contextlib.ExitStack() as peers:
        peer_ports: dict[str, int] = {}
        for name, start, package in (
            ("rspamd", rspamd_milter, "rspamd"),
            ("dkim", opendkim_milter, "opendkim"),
        ):
            if not shutil.which(package):
                skipped[name] = f"{package} is not installed (apt-get install {package})"
                continue
            try:
                peer_ports[name] = peers.enter_context(start())
            except RuntimeError as exc:
                skipped[name] = f"{package} did not start: {exc}"
        try:
            serve.start(wait_port=milter)
            bare.start(wait_port=bare_milter)
            for key, (owner, port) in other.items():
                with _pythonpath(args.compare_core or ROOT / "core"):
                    owner.start(wait_port=port)
                postfix.add_smtpd(
                    ports[f"b{key}'"], f"b{key}x", smtpd_milters=f"inet:127.0.0.1:{port}"
                )
            wait_until(lambda: port_open(content_filter), 30, "the content filter")
            postfix.add_smtpd(ports["plain"], "plain")
            postfix.add_smtpd(ports["milter"], "mw", smtpd_milters=f"inet:127.0.0.1:{milter}")
            postfix.add_smtpd(
                ports["bare"], "mwbare", smtpd_milters=f"inet:127.0.0.1:{bare_milter}"
            )
            for name, port in peer_ports.items():
                postfix.add_smtpd(ports[name], name, smtpd_milters=f"inet:127.0.0.1:{port}")
            postfix.add_content_filter(ports["cf"], content_filter, reinject)
            # smtp-source's load is all from one client: lift the per-client limits.
            postfix.main["smtpd_client_connection_count_limit"] = "0"
            postfix.main["default_process_limit"] = "100"
            postfix.start([*(ports[k] for k in ports if k not in skipped), reinject])
            modes: list[tuple[str, int, Serve | None]] = [
                ("(a) postfix alone", ports["plain"], None),
                ("(b) postfix + milter", ports["milter"], serve),
                ("(b0) postfix + milter, no detectors", ports["bare"], bare),
                ("(c) smtp gateway", smtp, serve),
                ("(c0) smtp gateway, no detectors", bare_smtp, bare),
                ("(d) postfix + content filter", ports["cf"], serve),
            ]
            if compare:
                # Each older row runs just before its own: the shared machine drifts in time.
                labels = [args.compare_core.resolve().parent.name] if args.compare_core else []
                labels += [f"loop {args.compare_loop}"] if args.compare_loop else []
                label = ", ".join(labels)
                for name, port, _owner in list(modes):
                    tag = name[1 : name.index(")")]
                    if tag not in ("b", "b0", "c", "c0"):
                        continue
                    owner, _port = other[tag[1:]]
                    older = owner.port if tag.startswith("c") else ports[f"{tag}'"]
                    row = (f"({tag}') {name[name.index(')') + 2 :]}, {label}", older, owner)
                    at = modes.index((name, port, _owner)) + (1 if args.older_after else 0)
                    modes.insert(at, row)
            if "rspamd" in peer_ports:
                modes.append(("(e) postfix + rspamd milter", ports["rspamd"], None))
            if "dkim" in peer_ports:
                modes.append(("(f) postfix + opendkim milter", ports["dkim"], None))
            wanted = {"a", *args.modes.split(",")}
            modes = [m for m in modes if m[0][1 : m[0].index(")")].rstrip("'") in wanted]
            # A short warm-up so that first-use costs (process spawns, imports) are not measured.
            for _name, port, _serve in modes:
                _phase(sink, port, min(50, n), s, size, None)
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
            for name, port, owner in modes:
                tag = name[1 : name.index(")")]
                out = args.profile / f"{tag}.txt" if args.profile is not None else None
                named = {"e": "rspamd", "f": "dkim"}.get(tag)
                peer = _listener(peer_ports[named]) if named else None
                mta = postfix.master_pid()
                results[name] = _phase(
                    sink, port, n, s, size, owner, out, by_thread, tag, mta=mta, peer=peer
                )
            # Postfix alone once more: the machine is shared, the baseline is both runs' mean.
            last = _phase(sink, ports["plain"], n, s, size, None, mta=postfix.master_pid())
        finally:
            postfix.stop()
            serve.stop()
            bare.stop()
            for owner, _port in other.values():
                owner.stop()
            sink.stop(remove=True)
    first = results["(a) postfix alone"]
    base = {k: (first[k] + last[k]) / 2 for k in ("accept", "end_to_end")}
    print(f"{n} messages of {size} bytes, {s} sessions, {os.cpu_count()} cores")
    if args.event_loop or args.compare_loop:
        own = args.event_loop or "the default"
        print(f"event loop: {own}; in the primed rows {args.compare_loop or own}")
    print(
        f"(a) postfix alone: {first['accept']:.0f} accept/s first, {last['accept']:.0f} last;"
        " ratios are to the mean"
    )
    width = max(38, *(len(name) for name in results))
    header = f"{'mode':{width}} {'accept/s':>9} {'ratio':>6} {'end-to-end/s':>13} {'ratio':>6}"
    print(
        header
        + f" {'serve CPU ms/msg':>17} {'of it system':>13} {'of it loop':>11} {'switches/msg':>13}"
        + f" {'peer CPU ms/msg':>16} {'postfix CPU ms/msg':>19}"
    )
    for name, r in results.items():
        cpu = f"{r['serve_cpu_ms']:17.2f}" if "serve_cpu_ms" in r else f"{'-':>17}"
        system = f"{r['serve_sys_ms']:13.2f}" if "serve_sys_ms" in r else f"{'-':>13}"
        loop = f"{r['serve_loop_ms']:11.2f}" if "serve_loop_ms" in r else f"{'-':>11}"
        switches = f"{r['serve_switches']:13.1f}" if "serve_switches" in r else f"{'-':>13}"
        peer_cpu = f"{r['peer_cpu_ms']:16.2f}" if "peer_cpu_ms" in r else f"{'-':>16}"
        mta_cpu = f"{r['postfix_cpu_ms']:19.2f}" if "postfix_cpu_ms" in r else f"{'-':>19}"
        print(
            f"{name:{width}} {r['accept']:9.0f} {r['accept'] / base['accept']:6.2f}"
            f" {r['end_to_end']:13.0f} {r['end_to_end'] / base['end_to_end']:6.2f} {cpu}"
            f" {system} {loop} {switches} {peer_cpu} {mta_cpu}"
        )
    for tag, per in (by_thread or {}).items():
        shown = sorted(per.items(), key=lambda item: -item[1][0])
        print(
            f"({tag}) by thread, CPU ms/msg (switches/msg): "
            + ", ".join(
                f"{name} {cpu * 1000 / n:.3f} ({sw / n:.1f})"
                for name, (cpu, sw) in shown
                if cpu or sw
            )
        )
    for name, r in results.items():
        if "serve_cpu_ms" in r and r["serve_cpu_ms"] == 0:
            # Postfix applies milter_default_action when it cannot reach the milter in time.
            print(f"not measured: {name}: mailwarden serve used no CPU (Postfix did not reach it)")
    for name, why in skipped.items():
        print(f"not run: {name}: {why}")
    if args.json:
        report = {
            "messages": n,
            "size": size,
            "sessions": s,
            "cores": os.cpu_count(),
            "event_loop": args.event_loop,
            "compare_loop": args.compare_loop,
            "baseline": base,
            "postfix_alone_last": last,
            "modes": results,
            "threads": by_thread,
            "skipped": skipped,
        }
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

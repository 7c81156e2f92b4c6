"""The measurements: the pipeline in-process per stage, the SMTP ingress per worker count, and
the peers on the same messages.

Every figure comes with a baseline measured in the same run (Python's ``email`` for parsing;
rspamd and SpamAssassin end to end when they are installed), because this machine, like the
appliances people size, is shared and noisy: ratios travel, absolute figures do not.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import multiprocessing
import os
import resource
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from mailwarden_sdk import Envelope

from ..config import load_config
from ..pipeline import Gateway
from ..plugins import build_plugin_manager
from ..stage import Stage, detector_stage

__all__ = [
    "OFFLINE_ANTISPAM",
    "Progress",
    "ReputationService",
    "StageStats",
    "python_email_parse",
    "reputation_service",
    "run_pipeline",
    "run_scan_workers",
    "run_smtp",
    "warm_home",
]

ENVELOPE = Envelope(mail_from="alice@example.org", rcpt_to=["bob@example.net"])
# The scans below are `live`: they cost what a gateway's scans cost, autolearn included.

#: Antispam as the peers are run (rspamd's spf, dkim, dmarc and lists off; spamd with
#: ``dns_available no``): rules, heuristics and Bayes, no DNS, and the resolver pinned to
#: loopback so that nothing a benchmark does leaves the machine or waits on its resolver.
OFFLINE_ANTISPAM = '[antispam]\nauthentication = false\ndns_servers = ["127.0.0.1"]\n'


class StageStats(msgspec.Struct, kw_only=True):
    """One stage over the corpus: rates, latency percentiles (ms) and total time (s)."""

    stage: str
    messages: int
    seconds: float
    msgs_per_s: float
    mb_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def stage_stats(stage: str, latencies_ms: list[float], total_bytes: int) -> StageStats:
    """Summarise one stage's per-message latencies."""
    ordered = sorted(latencies_ms)
    seconds = sum(ordered) / 1000.0
    rate = len(ordered) / seconds if seconds else 0.0
    return StageStats(
        stage=stage,
        messages=len(ordered),
        seconds=round(seconds, 4),
        msgs_per_s=round(rate, 1),
        mb_per_s=round(total_bytes / 1e6 / seconds, 2) if seconds else 0.0,
        p50_ms=round(_percentile(ordered, 0.50), 3),
        p95_ms=round(_percentile(ordered, 0.95), 3),
        p99_ms=round(_percentile(ordered, 0.99), 3),
    )


class Progress:
    """A one-line progress bar on a terminal; silent when output is not a terminal."""

    def __init__(self, label: str, total: int, stream: Any = None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0
        self._began = time.monotonic()
        if not self.live:
            # In a log, one line per phase is the progress.
            self.stream.write(f"{label} ({total}) ...\n")
            self.stream.flush()

    def step(self, count: int = 1) -> None:
        """Count ``count`` more items done."""
        self.done += count
        now = time.monotonic()
        if not self.live and self.done == self.total:
            self.stream.write(f"{self.label} done in {now - self._began:.1f} s\n")
            self.stream.flush()
        if self.live and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            width = 30
            filled = width * self.done // max(1, self.total)
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r{self.label:<24} [{bar}] {self.done}/{self.total}")
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def python_email_parse(messages: list[bytes], progress: Progress | None = None) -> StageStats:
    """The parsing baseline: Python's ``email`` (default policy) over the same bytes, walking
    every part and decoding every leaf, which is what our parse stage gives a detector."""
    latencies = []
    for raw in messages:
        began = time.perf_counter()
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        for part in parsed.walk():
            if not part.is_multipart():
                part.get_payload(decode=True)
        latencies.append((time.perf_counter() - began) * 1000.0)
        if progress:
            progress.step()
    return stage_stats("parse (python email)", latencies, sum(map(len, messages)))


def _new_home(prefix: str, config_text: str, seed: Path | None) -> Path:
    """A fresh gateway home holding ``config_text``, and the stores of ``seed`` if given."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    if seed is not None:
        shutil.copytree(seed, home, dirs_exist_ok=True)
    (home / "mailwarden.toml").write_text(config_text)
    return home


def warm_home(messages: list[bytes], config_text: str, concurrency: int = 8) -> Path:
    """A home whose stores have seen the corpus once (``Gateway.scan`` of every message).

    Runs copy it, so the reputation plugin answers from its LMDB cache, as a gateway in steady
    state does for the mail it keeps seeing, instead of asking the service mid-measurement.
    The caller removes the folder.
    """
    home = _new_home("mailwarden-bench-seed-", config_text, None)
    plugins = build_plugin_manager()
    config = load_config(home / "mailwarden.toml", plugins.config_schemas())

    async def go() -> None:
        async with Gateway(config, plugins=plugins) as gateway:
            gate = asyncio.Semaphore(concurrency)

            async def one(raw: bytes) -> None:
                async with gate:
                    await gateway.scan(raw, ENVELOPE, live=True)

            await asyncio.gather(*(one(raw) for raw in messages))

    asyncio.run(go())
    (home / "mailwarden.toml").unlink()
    return home


class ReputationService(msgspec.Struct):
    """A running reputation service: the config section for it, and its request counter."""

    section: str
    url: str
    ca_file: Path

    def lookups(self) -> int:
        """How many ``POST /v1/lookup`` requests the service has answered since it started."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(f"{self.url}/v1/server-stats", context=context) as reply:
            return int(json.load(reply)["by_path"].get("/v1/lookup", 0))


@contextmanager
def reputation_service() -> Iterator[ReputationService]:
    """``mailwarden reputation serve`` on 127.0.0.1 with no feeds (every answer is "clean"),
    with the ``[reputation]`` section (consent recorded) that points a gateway at it."""
    data = Path(tempfile.mkdtemp(prefix="mailwarden-bench-reputation-"))
    port = _free_port()
    args = [sys.executable, "-m", "mailwarden", "reputation", "serve", "--data", str(data)]
    process = subprocess.Popen(
        [*args, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cert = data / "tls" / "cert.pem"
    try:
        _wait_port(port, process, what="mailwarden reputation serve")
        url = f"https://127.0.0.1:{port}"
        section = (
            "[reputation]\nconsent = true\n"
            'consent_by = "mailwarden bench"\nconsent_at = "2026-01-01T00:00:00Z"\n'
            f'http_url = "{url}"\nhttp_ca_file = "{cert}"\n'
        )
        yield ReputationService(section, url, cert)
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def run_pipeline(
    messages: list[bytes],
    config_text: str,
    progress: Progress | None = None,
    concurrency: int = 8,
    seed: Path | None = None,
) -> dict[str, Any]:
    """The corpus through one gateway in this process, ``concurrency`` messages at a time.

    Three passes: ``Gateway.process`` one message at a time for the per-stage latencies; then
    ``Gateway.scan`` alone (parse, detect, decide: what rspamd's ``checkv2`` does) and
    ``Gateway.process`` (spool with fsync, scan, Maildir delivery with fsync, event record)
    with ``concurrency`` messages in flight, for the rates. CPU seconds and peak RSS cover all.
    """
    home = _new_home("mailwarden-bench-", config_text, seed)
    try:
        path = home / "mailwarden.toml"
        plugins = build_plugin_manager()
        config = load_config(path, plugins.config_schemas())
        stages: dict[str, list[float]] = {}

        async def each(work: Callable[[bytes], Any], width: int) -> float:
            gate = asyncio.Semaphore(width)

            async def one(raw: bytes) -> None:
                async with gate:
                    await work(raw)
                if progress:
                    progress.step()

            began = time.perf_counter()
            await asyncio.gather(*(one(raw) for raw in messages))
            return time.perf_counter() - began

        async def go() -> tuple[float, float]:
            async with Gateway(config, plugins=plugins) as gateway:

                async def scan(raw: bytes) -> None:
                    await gateway.scan(raw, ENVELOPE, live=True)

                async def measured(raw: bytes) -> None:
                    outcome = await gateway.process(raw, ENVELOPE, ingress="bench")
                    for stage, ms in outcome.decision.timings_ms.items():
                        stages.setdefault(stage, []).append(ms)

                async def process(raw: bytes) -> None:
                    await gateway.process(raw, ENVELOPE, ingress="bench")

                # Stage latencies one message at a time, so no stage waits for another's
                # message; then the rates with ``concurrency`` messages in flight.
                await each(measured, 1)
                return await each(scan, concurrency), await each(process, concurrency)

        cpu0 = _cpu()
        scan_wall, wall = asyncio.run(go())
        cpu = _cpu() - cpu0
        size = sum(map(len, messages))
        # The detectors' own times come just before the detect stage that holds them.
        detectors = sorted(s for s in stages if s.startswith(detector_stage("")))
        order: list[str] = []
        for stage in Stage:
            order += [*detectors, stage] if stage is Stage.DETECT else [stage]
        return {
            "stages": [stage_stats(s, stages[s], size) for s in order if s in stages],
            "scan": {
                "messages": len(messages),
                "concurrency": concurrency,
                "seconds": round(scan_wall, 3),
                "msgs_per_s": round(len(messages) / scan_wall, 1),
                "mb_per_s": round(size / 1e6 / scan_wall, 2),
            },
            "pipeline": {
                "messages": len(messages),
                "concurrency": concurrency,
                "seconds": round(wall, 3),
                "msgs_per_s": round(len(messages) / wall, 1),
                "mb_per_s": round(size / 1e6 / wall, 2),
                "cpu_seconds": round(cpu, 2),
                "cpu_ms_per_msg": _per_message_ms(cpu, len(messages)),
                "peak_rss_mb": round(_peak_rss_mb(), 1),
            },
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _scan_worker(
    config_path: str, messages: list[bytes], concurrency: int, barrier: Any, results: Any
) -> None:
    # One worker process: its own gateway (as `mailwarden serve` workers have), started before
    # the clock runs, then every message of its share through Gateway.scan.
    plugins = build_plugin_manager()
    config = load_config(config_path, plugins.config_schemas())

    async def go() -> tuple[float, float]:
        async with Gateway(config, plugins=plugins) as gateway:
            await gateway.scan(messages[0], ENVELOPE)  # warm: signatures mapped, threads up
            barrier.wait()
            cpu0 = _cpu()
            began = time.perf_counter()
            gate = asyncio.Semaphore(concurrency)

            async def one(raw: bytes) -> None:
                async with gate:
                    await gateway.scan(raw, ENVELOPE, live=True)

            await asyncio.gather(*(one(raw) for raw in messages))
            return time.perf_counter() - began, _cpu() - cpu0

    wall, cpu = asyncio.run(go())
    results.put((len(messages), wall, cpu, _peak_rss_mb()))


def run_scan_workers(
    messages: list[bytes],
    config_text: str,
    workers: int,
    concurrency: int = 8,
    seed: Path | None = None,
) -> dict[str, Any]:
    """``Gateway.scan`` in ``workers`` processes, each on its share of the corpus: the full
    detection pipeline per core without SMTP or storage, as rspamd's workers answer checkv2."""
    home = _new_home("mailwarden-bench-scan-", config_text, seed)
    try:
        path = home / "mailwarden.toml"
        # spawn, not fork: this process already ran gateways and their threads.
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(workers + 1)
        results = context.Queue()
        processes = [
            context.Process(
                target=_scan_worker,
                args=(str(path), messages[i::workers], concurrency, barrier, results),
            )
            for i in range(workers)
        ]
        for process in processes:
            process.start()
        barrier.wait(timeout=300)
        began = time.perf_counter()
        reports = [results.get(timeout=3600) for _ in processes]
        wall = time.perf_counter() - began
        for process in processes:
            process.join(timeout=60)
        size = sum(map(len, messages))
        return {
            "workers": workers,
            "messages": len(messages),
            "seconds": round(wall, 3),
            "msgs_per_s": round(len(messages) / wall, 1),
            "mb_per_s": round(size / 1e6 / wall, 2),
            "cpu_seconds_per_worker": round(sum(r[2] for r in reports) / workers, 2),
            "cpu_ms_per_msg": _per_message_ms(sum(r[2] for r in reports), len(messages)),
            "peak_rss_mb": round(max(r[3] for r in reports), 1),
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(
    port: int,
    process: subprocess.Popen[bytes],
    limit: float = 60.0,
    what: str = "mailwarden serve",
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def _peak_rss_tree(pid: int) -> float:
    """The largest peak RSS (MB) of ``pid`` and its children: the gateway's parent and workers."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    except OSError:
        pass
    peak = 0.0
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024.0)
        except (OSError, ValueError):
            continue
    return peak


def _smtp_client(
    port: int, messages: list[bytes], index: int, clients: int, sent: Any, failed: Any
) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
            for n in range(index, len(messages), clients):
                try:
                    smtp.sendmail(ENVELOPE.mail_from, ENVELOPE.rcpt_to, messages[n])
                except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused) as exc:
                    # A rejected message was processed all the same (a user's corpus may hold
                    # malware); only a lost session is a failure.
                    if getattr(exc, "smtp_code", 500) == 421:
                        raise
                with sent.get_lock():
                    sent.value += 1
    except (OSError, smtplib.SMTPException):
        with failed.get_lock():
            failed.value += 1


def run_smtp(
    messages: list[bytes],
    config_text: str,
    workers: int,
    clients: int,
    progress: Progress | None = None,
    seed: Path | None = None,
) -> dict[str, Any]:
    """``mailwarden serve`` with ``workers`` processes; ``clients`` SMTP sessions send the corpus.

    The rate counts 250 replies: each message fsynced, scanned, delivered to the Maildir and
    recorded before its 250. CPU seconds and peak RSS are the workers' (their parent included).
    """
    port = _free_port()
    smtp = f"\n[smtp]\nport = {port}\nworkers = {workers}\nmax_connections = 512\n"
    home = _new_home("mailwarden-bench-smtp-", config_text + smtp, seed)
    process = subprocess.Popen(
        [sys.executable, "-m", "mailwarden", "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MAILWARDEN_HOME": str(home)},
    )
    failures: list[BaseException] = []
    try:
        _wait_port(port, process)
        time.sleep(0.5 if workers > 1 else 0.1)  # let every worker bind
        # Client processes, not threads: one Python process of SMTP clients is held by its
        # GIL before a 2-worker gateway is, and would hide the workers' scaling.
        context = multiprocessing.get_context("fork")
        sent = context.Value("i", 0)
        failed = context.Value("i", 0)
        clients_list = [
            context.Process(target=_smtp_client, args=(port, messages, i, clients, sent, failed))
            for i in range(clients)
        ]
        began = time.perf_counter()
        for client in clients_list:
            client.start()
        deadline = time.monotonic() + 3600
        while any(c.is_alive() for c in clients_list) and time.monotonic() < deadline:
            if progress:
                progress.step(sent.value - progress.done)
            time.sleep(0.05)
        for client in clients_list:
            client.join()
        wall = time.perf_counter() - began
        if progress:
            progress.step(sent.value - progress.done)
        if failed.value:
            failures.append(RuntimeError(f"{failed.value} SMTP session(s) failed"))
        # What the clients used, so it can be told apart from the gateway's own CPU.
        clients_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_rss = _peak_rss_tree(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=120)
        shutil.rmtree(home, ignore_errors=True)
    if failures:
        raise RuntimeError(f"SMTP client failed: {failures[0]!r}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - clients_usage.ru_utime) + (after.ru_stime - clients_usage.ru_stime)
    size = sum(map(len, messages))
    return {
        "workers": workers,
        "clients": clients,
        "messages": len(messages),
        "seconds": round(wall, 3),
        "msgs_per_s": round(len(messages) / wall, 1),
        "mb_per_s": round(size / 1e6 / wall, 2),
        "cpu_seconds_per_worker": round(cpu / workers, 2),
        "cpu_ms_per_msg": _per_message_ms(cpu, len(messages)),
        "peak_rss_mb": round(peak_rss, 1),
    }


def _per_message_ms(cpu_seconds: float, messages: int) -> float:
    # CPU per message holds up on a shared machine where the rates move with the neighbours.
    return round(cpu_seconds * 1000 / max(messages, 1), 3)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and how long it took, in seconds."""
    began = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - began

"""Detectors in their own process: ``[detectors] isolated = ["name"]``.

A detector that may crash the interpreter (a C extension on hostile input), leak memory or
hold the GIL can run in a worker process with the same hook interface. The gateway keeps a
proxy in the plugin's place; the proxy's ``mailwarden_scan`` sends the raw message, envelope
and rule to the worker, which parses the message with the native core, calls the real
plugin's ``mailwarden_scan`` (sync or async) and sends the findings back. If the worker dies,
that message gets a ``DETECTOR_ERROR`` finding like any failing detector, and the next message
starts a fresh worker. Only ``mailwarden_scan`` (with ``mailwarden_startup``/``_shutdown`` in
the worker) crosses the process boundary; the plugin's config schema is read in the gateway
process, so its module is imported there too.

Frames on the worker's stdin/stdout are a 4-byte big-endian length and a msgpack body.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import struct
import sys
from pathlib import Path
from typing import Any

import msgspec

from mailwarden_sdk import Envelope, Finding, ScanContext, hookimpl

__all__ = ["IsolatedDetector", "worker_main"]

_HEADER = struct.Struct(">I")
_MAX_FRAME = 1 << 30


class _Hello(msgspec.Struct):
    target: str
    section: str | None
    config: Any
    data_dir: str


class _Request(msgspec.Struct):
    raw: bytes
    envelope: Envelope
    rule: str


class _Reply(msgspec.Struct):
    findings: list[Finding] = []
    error: str | None = None


def target_of(obj: Any) -> str:
    """``module:qualname`` of a plugin class or module, as the worker imports it."""
    if inspect.ismodule(obj):
        return obj.__name__
    cls = obj if inspect.isclass(obj) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


class IsolatedDetector:
    """Stands in for a plugin whose ``mailwarden_scan`` runs in a worker process."""

    def __init__(self, name: str, target: str, schema: tuple[str, type[Any]] | None) -> None:
        self.name = name
        self.target = target
        self._schema = schema
        self._section_config: Any = None
        self._data_dir = "."
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    @hookimpl
    def mailwarden_config_schema(self) -> tuple[str, type[Any]] | None:
        return self._schema

    @hookimpl
    def mailwarden_startup(self, host: Any) -> None:
        if self._schema is not None:
            self._section_config = msgspec.to_builtins(host.config_for(self._schema[0]))
        self._data_dir = str(host.data_dir)

    @hookimpl
    async def mailwarden_shutdown(self) -> None:
        await self._stop()

    @hookimpl
    async def mailwarden_scan(self, ctx: ScanContext) -> list[Finding]:
        request = msgspec.msgpack.encode(_Request(ctx.raw, ctx.envelope, ctx.rule))
        # One message at a time per worker keeps the frames of concurrent scans apart.
        async with self._lock:
            try:
                process = await self._ensure()
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(_HEADER.pack(len(request)) + request)
                await process.stdin.drain()
                size = _HEADER.unpack(await process.stdout.readexactly(_HEADER.size))[0]
                if size > _MAX_FRAME:
                    raise RuntimeError("worker sent an oversized frame")
                reply = msgspec.msgpack.decode(await process.stdout.readexactly(size), type=_Reply)
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as exc:
                code = await self._stop()
                raise RuntimeError(f"isolated worker of {self.name} died (exit {code})") from exc
            except BaseException:
                # A timeout or cancellation leaves a reply in flight: the worker's stream is no
                # longer in step, so it is replaced.
                await self._stop()
                raise
        if reply.error is not None:
            raise RuntimeError(f"in isolated worker: {reply.error}")
        return reply.findings

    async def _ensure(self) -> asyncio.subprocess.Process:
        if self._process is not None and self._process.returncode is None:
            return self._process
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mailwarden.isolation",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None
        hello = msgspec.msgpack.encode(
            _Hello(
                self.target,
                self._schema[0] if self._schema else None,
                self._section_config,
                self._data_dir,
            )
        )
        process.stdin.write(_HEADER.pack(len(hello)) + hello)
        await process.stdin.drain()
        self._process = process
        return process

    async def _stop(self) -> int | None:
        process, self._process = self._process, None
        if process is None:
            return None
        if process.returncode is None:
            process.kill()
        return await process.wait()

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs."""
        return self._process.pid if self._process and self._process.returncode is None else None


class _WorkerHost:
    def __init__(self, data_dir: str, config: Any) -> None:
        self.data_dir = Path(data_dir)
        self._config = config

    def config_for(self, section: str) -> Any:
        return self._config


def _load(target: str) -> Any:
    import importlib

    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj() if inspect.isclass(obj) else obj


def _read_frame(stream: Any) -> bytes | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size = _HEADER.unpack(header)[0]
    return bytes(stream.read(size))


def worker_main() -> None:
    """The worker process: host one plugin and answer scan requests until stdin closes."""
    from mailwarden_native import parse

    frames_out = os.fdopen(os.dup(1), "wb", buffering=0)
    # Whatever the plugin prints must never corrupt the frame stream.
    sys.stdout = sys.stderr
    frames_in = sys.stdin.buffer
    hello_frame = _read_frame(frames_in)
    if hello_frame is None:
        return
    hello = msgspec.msgpack.decode(hello_frame, type=_Hello)
    plugin = _load(hello.target)
    config = hello.config
    if hello.section is not None and hasattr(plugin, "mailwarden_config_schema"):
        _section, schema = plugin.mailwarden_config_schema()
        config = msgspec.convert(hello.config or {}, schema)
    host = _WorkerHost(hello.data_dir, config)
    loop = asyncio.new_event_loop()

    def call(fn: Any, **kwargs: Any) -> Any:
        wanted = inspect.signature(fn).parameters
        result = fn(**{k: v for k, v in kwargs.items() if k in wanted})
        return loop.run_until_complete(result) if inspect.isawaitable(result) else result

    if hasattr(plugin, "mailwarden_startup"):
        call(plugin.mailwarden_startup, host=host)
    try:
        while (frame := _read_frame(frames_in)) is not None:
            request = msgspec.msgpack.decode(frame, type=_Request)
            try:
                ctx = ScanContext(request.envelope, parse(request.raw), request.rule)
                produced = call(plugin.mailwarden_scan, ctx=ctx)
                reply = _Reply(findings=[f for f in (produced or ()) if isinstance(f, Finding)])
            except Exception as exc:
                reply = _Reply(error=repr(exc)[:300])
            body = msgspec.msgpack.encode(reply)
            frames_out.write(_HEADER.pack(len(body)) + body)
    finally:
        if hasattr(plugin, "mailwarden_shutdown"):
            call(plugin.mailwarden_shutdown, host=host)
        loop.close()


if __name__ == "__main__":
    worker_main()

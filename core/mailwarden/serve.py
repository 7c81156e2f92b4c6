"""``mailwarden serve``: the gateway with its listeners, until SIGTERM or SIGINT.

SIGHUP re-reads the config file and swaps in its rules without dropping connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from typing import Any

from .clitext import hostport
from .config import Config
from .errors import ConfigError
from .hookcalls import DaemonExecutor
from .ingress.content_filter import start_content_filter
from .ingress.milter import start_milter_server
from .ingress.scan_servers import start_scan_protocols
from .ingress.smtp import start_smtp_servers
from .ingress.tcp import prebind
from .inventory import core_stores, plugin_descriptors
from .pipeline import Gateway
from .privileges import (
    apply_core_dumps,
    drop_privileges,
    narrow_modes,
    own_home,
    private_umask,
    service_account,
)
from .record import plugin_file_stores
from .stores.temp import clean_temp
from .telemetry.metrics import metrics_directory, share_between_processes, worker_exited
from .version import __version__
from .workers import run_workers, worker_count

_IO_THREADS = 32

log = logging.getLogger(__name__)

__all__ = [
    "default_config_text",
    "loop_factory",
    "loop_name",
    "run",
    "serve_forever",
    "write_default_config",
]


def default_config_text() -> str:
    """The commented default configuration that ``mailwarden init`` writes."""
    return files("mailwarden").joinpath("default_config.toml").read_text(encoding="utf-8")


def write_default_config(path: Path) -> bool:
    """Write the default config to ``path`` unless a file is there; True if written."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(default_config_text(), encoding="utf-8")
    return True


def loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``serve`` runs on (``[gateway] event_loop``); None: asyncio's own.

    uvloop runs the loop's own work (polling, transports, timers, callbacks) in C on libuv.
    It is a dependency on Linux and macOS only; elsewhere asyncio's loop runs and the
    startup lines say so.
    """
    if config.gateway.event_loop != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """What the startup lines call ``loop``: ``uvloop 0.23.0`` or ``asyncio``."""
    if type(loop).__module__.partition(".")[0] == "uvloop":
        return f"uvloop {version('uvloop')}"
    return "asyncio"


def _serve_on_loop(
    gateway: Gateway,
    announce: Callable[[str], None],
    *,
    recover_spool: bool = True,
    shared_metrics: Path | None = None,
) -> None:
    # A runner with a loop factory rather than a global event loop policy: the loop choice
    # stays with this process's gateway and never leaks into plugins' own loops.
    with asyncio.Runner(loop_factory=loop_factory(gateway.config)) as runner:
        runner.run(
            run(gateway, announce, recover_spool=recover_spool, shared_metrics=shared_metrics)
        )


async def run(
    gateway: Gateway,
    announce: Callable[[str], None] = print,
    *,
    recover_spool: bool = True,
    shared_metrics: Path | None = None,
) -> None:
    """Start the gateway and its listeners, announce them, and serve until signalled.

    ``recover_spool`` removes the spool's temp files first; worker processes leave that to
    their parent, because a sibling may be writing there. ``shared_metrics``: in a worker,
    the directory where all the workers keep their metrics (see ``serve_forever``).
    """
    # Spool fsyncs, relay sessions and store writes run in the loop's default executor and
    # spend most of their time waiting on the disk or the next hop: the default size
    # (cores + 4) made concurrent SMTP sessions queue behind each other's fsyncs. Daemon
    # threads: plugin work stuck in one (asyncio.to_thread, run_cpu_bound) must not hold
    # SIGTERM until it returns.
    asyncio.get_running_loop().set_default_executor(DaemonExecutor(_IO_THREADS, "io"))
    if recover_spool:
        await asyncio.to_thread(gateway.spool.recover)
    await gateway.start()
    servers: list[asyncio.Server] = []
    web_server: Any = None
    web_task: asyncio.Task[None] | None = None
    stores = gateway.stores
    try:
        cfg = gateway.config
        # Plugins' declared stores are enforced with the core's (temp files go first).
        declared = plugin_descriptors(cfg, gateway.plugins)
        stores.plugin_stores = plugin_file_stores(store for _, store in declared)
        metrics_port = await stores.start(clean=recover_spool, shared_metrics=shared_metrics)
        await asyncio.to_thread(
            stores.app_log.write, "start", "gateway started", detail=__version__
        )
        announce(f"mailwarden {__version__}")
        announce(f"  config   {cfg.source or '(embedded defaults)'}")
        running = loop_name(asyncio.get_running_loop())
        if cfg.gateway.event_loop == "uvloop" and loop_factory(cfg) is None:
            running += " (uvloop is not installed)"
        announce(f"  loop     {running}")
        announce(f"  plugins  {', '.join(gateway.plugins.plugins) or '(none)'}")
        for name, loaded in gateway.plugins.plugins.items():
            # a plugin's one-line state, e.g. the antivirus warning that only its test
            # signature is loaded
            note = getattr(loaded.obj, "banner_note", None)
            if callable(note) and (text := note()):
                announce(f"  {name:<8} {text}")
        if cfg.smtp.enabled:
            servers.extend(await start_smtp_servers(gateway))
            announce(f"  smtp     {hostport(cfg.smtp.listen, cfg.smtp.port)}  (gateway listener)")
            if cfg.smtp.tls_port:
                where = hostport(cfg.smtp.listen, cfg.smtp.tls_port)
                announce(f"  smtps    {where}  (implicit TLS)")
        if cfg.web.enabled:
            web_server, web_task = await start_web(gateway, announce)
        reuse_port = worker_count(cfg.smtp.workers) > 1
        if cfg.milter.enabled:
            servers.append(await start_milter_server(gateway, reuse_port=reuse_port))
            where = cfg.milter.unix_socket or hostport(cfg.milter.listen, cfg.milter.port)
            announce(f"  milter   {where}  (Postfix smtpd_milters / Sendmail INPUT_MAIL_FILTER)")
        if cfg.content_filter.enabled:
            servers.append(await start_content_filter(gateway, reuse_port=reuse_port))
            cf = cfg.content_filter
            where = hostport(cf.listen, cf.port)
            announce(f"  filter   {where}  (after-queue; re-injects to {cf.reinject})")
        servers.extend(await start_scan_protocols(gateway, announce, reuse_port=reuse_port))
        # The queue resumes what the spool holds from before a restart.
        await gateway.delivery.start()
        if gateway.delivery.relaying:
            announce(f"  delivery relay {cfg.delivery.next_hop} (tls {cfg.delivery.tls})")
        else:
            announce(f"  delivery maildir {gateway.maildir.root}")
        announce(f"  spool    {gateway.spool.root}")
        announce(f"  events   {gateway.events.directory}")
        if metrics_port:
            announce(f"  metrics  http://{hostport(cfg.metrics.listen, metrics_port)}/metrics")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, _reload, gateway, announce)
        # Only now: whoever waits for "ready" may signal at once, and must not find the
        # default handlers (SIGHUP's would end the process).
        announce("ready")
        await stop.wait()
    finally:
        if web_server is not None and web_task is not None:
            web_server.should_exit = True
            await asyncio.gather(web_task, return_exceptions=True)
        for server in servers:
            server.close()
            await server.wait_closed()
        await gateway.delivery.stop()
        await stores.stop()
        await asyncio.to_thread(stores.app_log.write, "stop", "gateway stopped")
        await gateway.stop()


def _embedded_server_class() -> Any:
    import contextlib
    from collections.abc import Iterator

    import uvicorn

    class EmbeddedServer(uvicorn.Server):
        # uvicorn would take SIGTERM/SIGINT over and raise them again when it stops; the
        # gateway owns the signals and stops this server itself.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return EmbeddedServer


async def start_web(
    gateway: Gateway, announce: Callable[[str], None]
) -> tuple[Any, asyncio.Task[None]]:
    """Serve the web interface and API on ``[web] listen:port`` (HTTPS unless ``tls = false``).

    The socket is bound here with SO_REUSEPORT when there are workers, so each worker serves
    the pages of its own gateway and the kernel spreads the connections.
    """
    import uvicorn

    _EmbeddedServer = _embedded_server_class()
    from .cluster import mtls as cluster_mtls
    from .ingress.tcp import listening_socket
    from .tls import tls_paths
    from .web.app import WebState, create_app

    cfg = gateway.config.web
    await asyncio.to_thread(prepare_web, gateway, announce)
    state = WebState(gateway, secure_cookies=cfg.tls)
    ssl: dict[str, Any] = {}
    if cfg.tls:
        cert, key = tls_paths(gateway.config)
        ssl = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
        # [cluster] mutual TLS: clients are asked for a certificate of the cluster's CA.
        ssl.update(cluster_mtls.server_options(gateway.config))
    sock = listening_socket(cfg.listen, cfg.port, worker_count(gateway.config.smtp.workers) > 1)
    config = uvicorn.Config(
        create_app(state), log_level="warning", lifespan="off", access_log=False, **ssl
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    state.start_digests()
    scheme = "https" if cfg.tls else "http"
    announce(f"  web      {scheme}://{hostport(cfg.listen, cfg.port)}/")
    return server, task


def prepare_web(gateway: Gateway, announce: Callable[[str], None]) -> None:
    """What the web interface needs on its first start: the session secret, the first
    administrator and its password file, a self-signed certificate. The parent does this
    before workers fork: workers doing it at once raced on the same files (one failed on the
    secret's temp file, and two could sign sessions with different keys). Does nothing when
    everything is there."""
    from .tls import ensure_certificate, tls_paths
    from .web.app import web_auth

    cfg = gateway.config.web
    if not cfg.enabled:
        return
    first = web_auth(gateway).ensure_admin()
    if first is not None:
        announce(f"  web      first start: the admin password is in {first} (mode 0600)")
    if cfg.tls and not (gateway.config.tls.cert_file and gateway.config.tls.key_file):
        cert, key = tls_paths(gateway.config)
        ensure_certificate(cert, key, gateway.config.gateway.hostname)


def _reload(gateway: Gateway, announce: Callable[[str], None]) -> None:
    # SIGHUP: new rules without a restart; a bad file is refused and the old rules stay.
    try:
        changed = gateway.reload_config()
    except ConfigError as exc:
        announce(f"reload refused, running config kept: {exc}")
        return
    names = ", ".join(rule.name for rule in gateway.config.rules)
    announce(f"reloaded rules: {names}")
    if changed:
        announce(f"  changed, applied at the next start: {', '.join(changed)}")


def _listeners(config: Config) -> list[tuple[str, int]]:
    """The TCP ports ``serve`` listens on (the metrics listener excepted)."""
    found: list[tuple[str, int]] = []
    if config.smtp.enabled:
        found.append((config.smtp.listen, config.smtp.port))
        if config.smtp.tls_port:
            found.append((config.smtp.listen, config.smtp.tls_port))
    if config.milter.enabled and not config.milter.unix_socket:
        found.append((config.milter.listen, config.milter.port))
    if config.content_filter.enabled:
        found.append((config.content_filter.listen, config.content_filter.port))
    if config.web.enabled:
        found.append((config.web.listen, config.web.port))
    return found


def leave_root(gateway: Gateway, announce: Callable[[str], None], *, reuse_port: bool) -> None:
    """With ``[gateway] user``: bind the listening ports (ports below 1024 need root), give the
    home folder to the account, then switch to it for good. Nothing without it."""
    config = gateway.config
    account = service_account(config)
    if account is None:
        return
    if os.geteuid() != 0:
        if os.geteuid() == account.uid:
            return
        raise ConfigError(
            f"gateway.user = {account.user!r}: serve runs as uid {os.geteuid()} and can only "
            "switch to that account when started as root",
            path=config.source,
        )
    for host, port in _listeners(config):
        prebind(host, port, reuse_port)
    changed = own_home(config.home, account)
    drop_privileges(account)
    announce(
        f"  user     {account.user} (uid {account.uid}, gid {account.gid}); ports bound as root"
    )
    if changed:
        announce(f"  home     {len(changed)} paths given to {account.user}")


def check_store_modes(gateway: Gateway, announce: Callable[[str], None]) -> None:
    """Narrow every store to its owner (0700/0600) and write what was wider into the
    application log. Stores placed outside the home keep their group's permissions (a
    ``root:mailwarden 0640`` config file) and lose only other users'."""
    config = gateway.config
    home = config.home
    outside: list[Path] = []
    declared = [*core_stores(config), *(d for _, d in plugin_descriptors(config, gateway.plugins))]
    for descriptor in declared:
        path = Path(descriptor.path)
        if not path.is_absolute() or path == home or home in path.parents:
            continue
        if path in home.parents or path == Path(path.anchor):
            continue  # never a walk of a folder above the home
        outside.append(path)
    fixed = narrow_modes([home]) + narrow_modes(outside, keep=0o070)
    if not fixed:
        return
    shown = "; ".join(f"{path} was {mode:04o}" for path, mode in fixed[:20])
    more = f"; and {len(fixed) - 20} more" if len(fixed) > 20 else ""
    log.warning("store permissions narrowed to the owner: %s%s", shown, more)
    gateway.stores.app_log.write(
        "admin", "store permissions narrowed", actor="mailwarden", detail=shown + more
    )
    # Workers open their own; an environment must not cross the fork.
    gateway.stores.app_log.close()
    announce(f"  stores   permissions of {len(fixed)} paths narrowed (see the application log)")


def serve_forever(gateway: Gateway, announce: Callable[[str], None] = print) -> None:
    """Serve in this process, or in ``[smtp] workers`` processes sharing the ports.

    With workers and ``[metrics] port``, every worker keeps its metrics in files under
    ``<home>/run/metrics`` (emptied here, before the fork) and any of them answers a scrape
    with the figures of all; one process alone keeps them in memory.
    """
    count = worker_count(gateway.config.smtp.workers)
    private_umask()
    leave_root(gateway, announce, reuse_port=count > 1)
    # After the switch: changing the account resets the dumpable flag.
    cores = apply_core_dumps(gateway.config)
    if cores is not None:
        announce(f"  cores    memory dumps on, into {cores}")
    check_store_modes(gateway, announce)
    if count <= 1:
        _serve_on_loop(gateway, announce)
        return
    gateway.spool.recover()
    clean_temp(gateway.stores.temp)
    prepare_web(gateway, announce)
    source = gateway.config.source
    shared: Path | None = None
    exited: Callable[[int], None] | None = None
    if gateway.config.metrics.port:
        shared = metrics_directory(gateway.config.home)
        share_between_processes(shared)
        directory = shared

        def exited(pid: int) -> None:
            worker_exited(pid, directory)

    def worker() -> int:
        # Each worker builds its own gateway: plugin state and threads never cross a fork.
        own = Gateway.from_file(source)
        _serve_on_loop(own, announce, recover_spool=False, shared_metrics=shared)
        return 0

    run_workers(count, worker, announce, exited=exited)

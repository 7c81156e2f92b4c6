"""What a detector sees of one message, and what it sees of the gateway running it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from mailwarden_native import ParsedMessage

from .stash import Stash
from .types import Envelope, Finding

__all__ = [
    "Host",
    "HostLoader",
    "ScanContext",
    "command_host",
    "config_option",
    "plugin_data_dir",
]

F = TypeVar("F", bound=Callable[..., Any])


@runtime_checkable
class Host(Protocol):
    """The gateway as a plugin sees it at start-up and shutdown.

    ``config_for(section)`` returns the decoded, validated Struct of the section the plugin
    declared through ``mailwarden_config_schema`` (its defaults when the file has no such
    section); ``data_dir`` is the directory under which a plugin keeps its own stores, one
    sub-directory per plugin by convention.
    """

    data_dir: Path

    def config_for(self, section: str) -> Any:
        """The validated config Struct of ``section``."""
        ...

    def resubmit(
        self, raw: bytes, envelope: Envelope, findings: Sequence[Finding] = ()
    ) -> Awaitable[tuple[int, str]]:
        """Put a message the plugin held back through the pipeline again (SDK 1.5).

        The message is spooled, every detector runs, ``findings`` are added to theirs (a
        sandbox verdict, say), and the rule's action is carried out and recorded. The SMTP
        transaction is long over, so a refusing action takes its after-acceptance form (reject
        becomes "blocked", tempfail becomes the rule quarantine). Returns the reply code and
        text: below 400 the message is durable in the gateway and the plugin may drop its copy;
        otherwise the plugin keeps it and tries again later. Only on a started gateway.
        """
        ...

    def deliver(self, raw: bytes, envelope: Envelope) -> Awaitable[str]:
        """Send a message an administrator released on to ``envelope.rcpt_to`` (SDK 1.7).

        The way the core's own released mail goes, without scanning it again: into the spool
        and the relay queue (``[delivery] mode = "relay"``), else into the local Maildir. The
        message is durable in the gateway when the awaitable completes, so the plugin may then
        drop its copy. Returns where it went (``"queued as ..."`` / ``"delivered as ..."``).
        Raises an exception when it could not be made durable (the plugin keeps its copy).
        Async; only on a started gateway.
        """
        ...


class ScanContext:
    """One message on its way through the pipeline, as given to ``mailwarden_scan``.

    The message is parsed once by the native core before any detector runs; ``message.parts``
    are zero-copy views into ``raw`` and ``Part.decoded()`` is cached, so detectors share the
    decoding work. ``stash`` is typed per-message state for plugins that cooperate (see
    :class:`~mailwarden_sdk.StashKey`); detectors run concurrently, so never rely on another
    detector's entries inside ``mailwarden_scan`` - read them in ``mailwarden_verdict``.
    ``dry_run`` (SDK 1.17) is true when the gateway only scans and will not act on the
    message (``Gateway.scan``, ``mailwarden rules test``, ``mailwarden scan``, replays, the
    scan services): a ``mailwarden_action`` implementation then keeps nothing (no copy in a
    quarantine), as the gateway keeps no backup.
    ``live`` (SDK 1.18) is true when the message is real mail: an ingress that acts on it, or
    a scan service (spamd, clamd, HTTP checks) whose MTA acts on the answer. It is false for
    an admin's look at a message (``mailwarden scan``, ``mailwarden rules test``, replays,
    ``mailwarden.testing.scan``): a plugin then changes no lasting state and sends nothing to
    a third party: no Bayes autolearn, no sandbox submission. It defaults to ``not dry_run``.
    """

    __slots__ = ("dry_run", "envelope", "live", "message", "rule", "stash")

    def __init__(
        self,
        envelope: Envelope,
        message: ParsedMessage,
        rule: str = "default",
        *,
        dry_run: bool = False,
        live: bool | None = None,
    ) -> None:
        self.envelope = envelope
        self.message = message
        self.rule = rule
        self.stash = Stash()
        self.dry_run = dry_run
        self.live = not dry_run if live is None else live

    @property
    def raw(self) -> bytes:
        """The message exactly as received."""
        return self.message.raw

    def __repr__(self) -> str:
        return (
            f"<ScanContext rule={self.rule!r} from={self.envelope.mail_from!r} "
            f"parts={len(self.message.parts)} size={len(self.message.raw)}>"
        )


def command_host(config_path: str | None = None) -> Host:
    """The gateway's :class:`Host` for a plugin's command-line command.

    The ``mailwarden`` command loads the configuration the gateway would (``config_path``, else
    ``$MAILWARDEN_CONFIG``, else ``<home>/mailwarden.toml``) and validates it, so a plugin's
    command sees exactly the settings and data directory the running gateway uses. Raises
    ``RuntimeError`` outside the ``mailwarden`` command.
    """
    import click

    context = click.get_current_context(silent=True)
    loader = context.find_root().obj if context is not None else None
    if not isinstance(loader, HostLoader):
        raise RuntimeError("command_host() works inside the mailwarden command line only")
    return loader.load(config_path)


def config_option(command: F) -> F:
    """The ``--config FILE`` option of a plugin's command (SDK 1.8), passed to the command as
    ``config_path``: hand it to :func:`command_host`, so every plugin's commands name the
    gateway's config the same way (default ``$MAILWARDEN_CONFIG``, else
    ``<home>/mailwarden.toml``)."""
    import click

    option = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="Gateway config file (default: $MAILWARDEN_CONFIG or <home>/mailwarden.toml).",
    )
    return option(command)


@runtime_checkable
class HostLoader(Protocol):
    """What the ``mailwarden`` command line puts in its click context for
    :func:`command_host` (the core implements it; the SDK never imports the core)."""

    def load(self, config_path: str | None) -> Host:
        """The Host for ``config_path`` (or the default config)."""
        ...


def plugin_data_dir(host: Host, name: str) -> Path:
    """The directory a plugin called ``name`` keeps its files in, created on first use."""
    path = host.data_dir / name
    path.mkdir(parents=True, exist_ok=True)
    return path

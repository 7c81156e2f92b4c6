"""The hooks a mailwarden plugin may implement.

The pipeline, in order (see DESIGN.md "One way through")::

    mailwarden_config_schema      once, when the config is loaded
    mailwarden_startup            once per gateway, before the first message
    for each message:
        mailwarden_policy_step    at each RCPT and at the end of DATA, before the spool (SDK 1.15)
        mailwarden_scan           every detector, concurrently, each under its own time budget
        mailwarden_verdict        folded verdict, adjustable (wrappers allowed)
        mailwarden_action         decided action: back up, rewrite the message (SDK 1.3)
        mailwarden_hold           only for a message whose verdict says "hold" (SDK 1.5)
        mailwarden_message_processed   the recorded event, for observers
    mailwarden_shutdown           once, when the gateway stops

``mailwarden_data_stores``, ``mailwarden_quarantines`` and ``mailwarden_cli_commands`` are
asked whenever the core needs the list (data inventory, web interface, command line).

An implementation may accept fewer arguments than its spec names (pluggy's rule), so a spec can
grow without breaking plugins.

Every hook the gateway calls runs under a time budget (``[detectors] timeout`` for scans,
``[hooks]`` for the others). An ``async`` implementation that runs out of time is cancelled;
a synchronous one runs in a worker thread, which cannot be stopped: the gateway stops waiting
for it and goes on, and the thread finishes on its own (it never holds the process at exit).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, overload

import pluggy

if TYPE_CHECKING:
    import msgspec

    from .context import Host, ScanContext
    from .policy import PolicyRequest, PolicyVerdict
    from .quarantines import Quarantine
    from .stores import StoreDescriptor
    from .types import Action, Finding, MessageEvent, Verdict

PROJECT_NAME = "mailwarden"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: The attribute :func:`nonblocking` sets on an implementation: ``True`` or its ``when``.
NONBLOCKING = "mailwarden_nonblocking"

_F = TypeVar("_F", bound=Callable[..., Any])


@overload
def nonblocking(function: _F, /) -> _F: ...


@overload
def nonblocking(*, when: Callable[..., bool]) -> Callable[[_F], _F]: ...


def nonblocking(
    function: _F | None = None, /, *, when: Callable[..., bool] | None = None
) -> _F | Callable[[_F], _F]:
    """Declare that a ``mailwarden_verdict`` or ``mailwarden_action`` implementation never
    blocks: no I/O, no lock held by another thread, no wait, little CPU (SDK 1.19).

    The gateway hands those hooks to a worker thread, whose hand-over and hand-back cost
    more than a small hook's own work. When every implementation of the hook is marked, it
    runs on the event loop's thread instead, without a budget: a marked hook that blocks
    stops every message for as long as it blocks. With ``when``, a function called with the
    hook's arguments as keywords (on the loop's thread, before the hook; it must be quick and
    change nothing), the hook is non-blocking only for the calls where it returns true, for
    an implementation that blocks only sometimes (``when=lambda action, **_: not
    action.remove_parts``)::

        @hookimpl
        @nonblocking
        def mailwarden_verdict(self, ctx, verdict): ...
    """

    def mark(implementation: _F) -> _F:
        setattr(implementation, NONBLOCKING, True if when is None else when)
        return implementation

    return mark if function is None else mark(function)


@hookspec
def mailwarden_config_schema() -> tuple[str, type[msgspec.Struct]] | None:
    """Declare the config section this plugin owns and the Struct it decodes into.

    Runs when a config file is loaded or checked, before start-up. Return ``(section, Type)``;
    the core decodes ``[section]`` of the TOML file into ``Type`` (defaults when absent) and
    reports a bad value with its key and line. Synchronous.
    """


@hookspec
def mailwarden_startup(host: Host) -> Awaitable[None] | None:
    """Open resources (databases, connections, compiled signatures) for one gateway.

    Runs once per gateway before the first message is scanned; ``host.config_for(section)``
    gives the plugin's validated config. May be ``async``; a synchronous one runs in a worker
    thread. An exception, or no return within ``[hooks] startup`` seconds, stops the gateway
    from starting, with the plugin named in the error.
    """


@hookspec
def mailwarden_shutdown(host: Host) -> Awaitable[None] | None:
    """Close what ``mailwarden_startup`` opened. Runs once when the gateway stops; may be async.

    Each implementation gets ``[hooks] shutdown`` seconds; past that (or on an exception) it is
    logged and the next plugin is called.
    """


@hookspec
def mailwarden_policy_step(
    request: PolicyRequest,
) -> PolicyVerdict | Awaitable[PolicyVerdict | None] | None:
    """Answer whether a sender may go on, before its message is accepted (SDK 1.15).

    Asked by the SMTP gateway at each ``RCPT TO`` (``request.stage == "recipient"``) and at
    the end of ``DATA`` (``"message"``, with ``request.size``), by the milter at the end of the
    message (both stages), never by the after-queue content filter (the MTA has accepted the
    message already). Steps are asked one after the other in pluggy's order; the built-in
    greylisting and rate limits are steps too, registered ``trylast``. Return ``None`` for no
    opinion (the next step is asked) or a :class:`~mailwarden_sdk.PolicyVerdict`: ``accept``
    lets the request through without asking the later steps, ``tempfail`` / ``reject`` answer
    the client with their reply. May be ``async`` (a lookup in shared state); a synchronous one
    runs in a worker thread. Each implementation gets ``[hooks] policy_step`` seconds; an
    exception, a timeout or an answer that is not a verdict is a ``451 4.3.0``, never an
    acceptance.
    """


@hookspec
def mailwarden_scan(
    ctx: ScanContext,
) -> Iterable[Finding] | Awaitable[Iterable[Finding] | None] | None:
    """Examine one message and return findings.

    Runs for every message, after parsing and policy, for each detector the message's rule
    enables. Return an iterable of :class:`~mailwarden_sdk.Finding` (empty or ``None`` means
    nothing found), or make the implementation ``async`` (network lookups). Each implementation
    is called on its own, concurrently with the others, under the time budget of
    ``[detectors] timeout`` (or its per-detector override): an exception or a timeout becomes a
    ``DETECTOR_ERROR``/``DETECTOR_TIMEOUT`` finding and never stops the other detectors.
    Synchronous implementations run in a worker thread, so CPU-bound work should release the
    GIL (the native core does); an ``async`` one is cancelled when its budget is spent and does
    CPU work through :func:`~mailwarden_sdk.run_cpu_bound`. Wrappers are not allowed on this
    hook.
    """


@hookspec
def mailwarden_verdict(ctx: ScanContext, verdict: Verdict) -> None:
    """Adjust the folded verdict before the rule turns it into an action.

    Runs once per message after every detector finished. Change ``verdict`` in place; use
    ``@hookimpl(wrapper=True)`` and ``yield`` to run around the other implementations (for
    example to override what they decided). Synchronous; runs in a worker thread, on a copy
    of the folded verdict. All implementations together get ``[hooks] verdict`` seconds per
    message: past that, or when one raises, the folded verdict stands without their changes,
    with an error finding (``HOOK_TIMEOUT`` / ``DETECTOR_ERROR`` from ``verdict``), and the
    message is not delivered (at least a 451).
    """


@hookspec(firstresult=True)
def mailwarden_action(ctx: ScanContext, verdict: Verdict, action: Action) -> Action | None:
    """Carry out the part of a decided action that needs the message's content (SDK 1.3).

    Runs once per message after the rule turned the verdict into ``action``, before the
    gateway acts. Return a changed copy (``msgspec.structs.replace``) to take over, or
    ``None`` to leave it; the first non-``None`` answer wins. The gateway itself keeps the
    backup copy ``action.backup`` asks for (its id is ``action.backup_id``); the built-in
    antivirus plugin, for ``action.remove_parts``, returns the action with
    ``replace_message``: the message without those parts plus a notice naming the backup.
    Synchronous (in a worker thread, after the verdict hooks); all implementations together
    get ``[hooks] action`` seconds. An exception is logged and the action stands as decided; so
    does a timeout, recorded as a ``HOOK_TIMEOUT`` finding of ``action``.
    """


@hookspec
def mailwarden_hold(ctx: ScanContext, verdict: Verdict) -> Awaitable[str | None] | str | None:
    """Take custody of a message that is to wait for a verdict (SDK 1.5).

    Called when the rule's action is carried out and ``verdict.sandbox == "hold"`` made the
    policy choose to hold the message (nothing more final applied). An implementation that
    keeps the message returns its own id for it, after the message is durable in its store; the
    core then answers 250 and forgets the message. Return ``None`` when the hold is not yours or
    your store refuses it: when nobody takes it the core answers 451, so the sender keeps it.
    The first id returned wins. May be ``async``; an exception, or no answer within
    ``[hooks] hold`` seconds, counts as a refusal.

    Later, the plugin puts the message back through the pipeline with
    :meth:`Host.resubmit <mailwarden_sdk.Host.resubmit>`, adding the verdict as findings.
    """


@hookspec
def mailwarden_learn(raw: bytes, label: str, by: str) -> Awaitable[str | None] | str | None:
    """Teach a classifier that ``raw`` is ``"spam"`` or ``"ham"``, or make it forget what
    ``raw`` taught (``label == "forget"``) (SDK 1.11).

    Called for clients that report mail through a protocol, such as spamd's ``TELL``
    (``spamc -L spam``), with ``by`` naming who reported it for the classifier's journal.
    Return a short account (``"learned as spam"``, ``"already learned as spam"``) when you
    keep a classifier, ``None`` when you do not. May be ``async``; an exception is a failure
    the client is told about.
    """


@hookspec
def mailwarden_message_processed(event: MessageEvent) -> None:
    """Observe a message that was decided and acted on.

    Runs once per message after the event was recorded; ``event`` must not be modified.
    Synchronous, on a thread of this plugin's own, off the mail path: events come in order,
    one call at a time. A call past ``[hooks] message_processed`` seconds is logged and
    counted; events wait meanwhile, at most ``[hooks] observer_backlog`` of them (more are
    dropped for this plugin and counted). An exception here is logged and ignored.
    """


@hookspec
def mailwarden_data_stores(host: Host) -> Iterable[StoreDescriptor]:
    """List the stores of user data this plugin keeps (path, what, retention, caps, readers).

    Asked by ``mailwarden data-inventory`` and the retention enforcer, usually in a process
    where the gateway is not started: ``host`` describes the configuration being inventoried
    (``host.data_dir``, ``host.config_for(section)``) so the paths and caps declared are the
    configured ones. Synchronous.
    """


@hookspec
def mailwarden_quarantines(host: Host) -> Iterable[Quarantine]:
    """Offer this plugin's quarantines to the web interface and the REST API (SDK 1.7).

    Asked on a started gateway whenever the web interface needs the list (every quarantine
    page and API call), so answer from what ``mailwarden_startup`` opened and return nothing
    when the store is not open (the plugin is disabled). Return one
    :class:`~mailwarden_sdk.Quarantine` per store: the core lists, shows (as text), releases,
    deletes and, where the quarantine can learn, trains through it, with the permissions
    ``queues.view`` / ``queues.manage`` checked and every change written to the application
    event log. Synchronous; ``host`` is the started gateway (:meth:`Host.deliver
    <mailwarden_sdk.Host.deliver>` for releases).
    """


@hookspec
def mailwarden_cli_commands() -> Iterable[Any]:
    """Return click commands this plugin adds to the ``mailwarden`` command line.

    Each is mounted as ``mailwarden <command.name>``; a group becomes a sub-command tree.
    """

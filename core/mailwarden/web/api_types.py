"""The shapes of the REST API: request bodies, query parameters and answers as msgspec types,
attached to their handlers with :func:`api`; the OpenAPI document is generated from them.

Answers the handlers build as dictionaries are declared with ``forbid_unknown_fields``, so the
schema says ``additionalProperties: false`` and the test that checks every route's real
answers against the document catches a field that is not declared here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec

from mailwarden_sdk import MessageEvent, QuarantineEntry

from ..config import RuleConfig
from ..inventory import StoreState
from ..stores.applog import AppEvent
from ..stores.authlog import AuthEvent
from ..stores.backup import BackupEntry

__all__ = ["ApiShape", "api", "shape_of"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ApiShape:
    """What an API route takes and answers: its query parameters (a struct whose fields are
    the parameters), its JSON body, its answer (``bytes`` for a download) and its status."""

    response: Any
    query: type[msgspec.Struct] | None = None
    body: Any = None
    status: int = 200


def api(
    response: Any, *, query: type[msgspec.Struct] | None = None, body: Any = None, status: int = 200
) -> Callable[[F], F]:
    """Declare a handler's request and answer types for the OpenAPI document."""

    def mark(handler: F) -> F:
        handler.__dict__["api_shape"] = ApiShape(response, query, body, status)
        return handler

    return mark


def shape_of(handler: Callable[..., Any]) -> ApiShape | None:
    """The shape :func:`api` declared for ``handler``, if any."""
    shape = getattr(handler, "api_shape", None)
    return shape if isinstance(shape, ApiShape) else None


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class _Answer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


# -- errors, login ---------------------------------------------------------------------------


class Error(_Answer):
    """What every refusal answers (400, 401, 403, 404, 409, 413, 415, 422, 429)."""

    error: str


class Health(_Answer):
    status: str


class Login(msgspec.Struct, kw_only=True):
    name: str
    password: str


class Session(_Answer):
    name: str
    roles: list[str]
    csrf: str


class Me(_Answer):
    name: str
    roles: list[str]
    permissions: list[str]
    source: str
    csrf: str | None


# -- events, statistics, logs ----------------------------------------------------------------

_WHEN = "2h, 7d, 2026-12-06T14:30 or a Unix time"


class EventsQuery(msgspec.Struct, kw_only=True):
    sender: Annotated[str | None, _doc("the envelope sender contains this")] = None
    recipient: Annotated[str | None, _doc("a recipient contains this")] = None
    subject: Annotated[str | None, _doc("the subject contains this")] = None
    status: Annotated[str | None, _doc("the verdict's status")] = None
    action: Annotated[str | None, _doc("deliver, reject, quarantine...")] = None
    message_id: str | None = None
    client: Annotated[str | None, _doc("the client address")] = None
    since: Annotated[str | None, _doc(_WHEN)] = None
    until: Annotated[str | None, _doc(_WHEN)] = None
    hours: Annotated[float | None, _doc("the last N hours (instead of since)")] = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class Stats(_Answer):
    hours: int
    messages: int
    actions: dict[str, int]
    by_hour: list[dict[str, int]]


class AppLogQuery(msgspec.Struct, kw_only=True):
    kind: Annotated[str | None, _doc("admin, login, update, error, start, stop")] = None
    actor: str | None = None
    hours: float | None = None
    since: Annotated[float | None, _doc("a Unix time")] = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 200


class AuthLogQuery(msgspec.Struct, kw_only=True):
    user: str | None = None
    client: Annotated[str | None, _doc("the client address")] = None
    hours: float | None = None
    since: Annotated[float | None, _doc("a Unix time")] = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 200


# -- quarantines -----------------------------------------------------------------------------


class Held(_Answer):
    id: str
    held_at: float
    sender: str
    recipients: list[str]
    subject: str | None
    rule: str
    reason: str
    size: int


class Attachment(_Answer):
    name: str | None
    type: str
    size: int


class HeldMessage(_Answer):
    id: str
    held_at: float
    size: int
    sender: str
    recipients: list[str]
    rule: str
    reason: str
    subject: str | None
    headers: list[tuple[str, str]]
    text: str
    attachments: list[Attachment]


class QuarantineStore(_Answer):
    name: str
    owner: str
    messages: int | None
    bytes: int | None
    max_bytes: int | None
    max_entries: int | None
    in_web: bool
    quarantine: str | None
    title: str | None
    manage: str


class Released(_Answer):
    released: str


class Deleted(_Answer):
    deleted: str


class PluginQuery(msgspec.Struct, kw_only=True):
    q: Annotated[str | None, _doc("sender, recipient, subject or id contains it")] = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0


class PluginEntry(QuarantineEntry, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A held message as the SDK lists it, with its quarantine and why it is held."""

    quarantine: str
    why: str


class PluginMessage(PluginEntry, frozen=True):
    title: str
    can_learn: bool
    headers: list[tuple[str, str]]
    text: str
    attachments: list[Attachment]


class PluginAct(_Answer):
    quarantine: str
    id: str
    act: str
    learned: str | None
    result: str


# -- rules, settings, inventory ------------------------------------------------------------


class Rules(msgspec.Struct, kw_only=True):
    """The rules in order: what GET answers and PUT takes (a bare list is taken too)."""

    rules: list[RuleConfig]


class SectionSaved(_Answer):
    section: str
    restart_needed: bool


# -- users, roles, tokens ----------------------------------------------------------------


class LocalUser(_Answer):
    name: str
    roles: list[str]


class DirectoryLogin(_Answer):
    enabled: bool
    url: str | None
    login_bind: str


class Token(_Answer):
    id: str
    name: str
    roles: list[str]
    scopes: list[str]
    created: float | None


class Users(_Answer):
    local: list[LocalUser]
    directory: DirectoryLogin
    groups: dict[str, list[str]]
    tokens: list[Token]


class Role(_Answer):
    name: str
    builtin: bool
    permissions: list[str]


class RolePermissions(msgspec.Struct, kw_only=True):
    permissions: list[str]


class RoleSaved(_Answer):
    name: str
    permissions: list[str]


class NewToken(msgspec.Struct, kw_only=True):
    name: str
    roles: list[str]


class TokenCreated(_Answer):
    token: str


class TokenRevoked(_Answer):
    revoked: str
    name: str


# -- signatures --------------------------------------------------------------------------


class Signatures(_Answer):
    plugin: str
    command: str
    error: str | None = None
    version: str | None = None
    signatures: Any = None
    report: str | None = None
    sources: list[Any] | None = None
    info: dict[str, Any] | None = None


# -- cluster (every node of [cluster]) -----------------------------------------------------


class NodeStatus(_Answer):
    """Whether one node answered the console (``error`` says why not)."""

    name: str
    answered: bool
    local: bool
    count: int
    error: str | None


class ClusterEvent(MessageEvent, kw_only=True, forbid_unknown_fields=True):
    """A message event with the node that logged it."""

    node: str


class ClusterEvents(_Answer):
    nodes: list[NodeStatus]
    events: list[ClusterEvent]


class ClusterHeld(Held):
    """A held message with the node that holds it."""

    node: str


class ClusterHeldList(_Answer):
    nodes: list[NodeStatus]
    held: list[ClusterHeld]


class ClusterNodeQuery(msgspec.Struct, kw_only=True):
    node: Annotated[str | None, _doc("the node that holds it (default: this one)")] = None


class ClusterReleased(Released):
    node: str


class ClusterDeleted(Deleted):
    node: str


class NodeConfig(NodeStatus):
    version: Annotated[str | None, _doc("the same version: the same configuration")]


class ClusterConfig(_Answer):
    nodes: list[NodeConfig]


class NodePushed(_Answer):
    name: str
    pushed: bool
    error: str | None = None
    version: str | None = None
    next_start: Annotated[list[str] | None, _doc("sections that apply at its next start")] = None


class ClusterPush(_Answer):
    version: str
    nodes: list[NodePushed]


# Re-exported for the handlers' declarations.
EVENTS = list[MessageEvent]
APP_LOG = list[AppEvent]
AUTH_LOG = list[AuthEvent]
INVENTORY = list[StoreState]
BACKUPS = list[BackupEntry]
ENTRIES = list[QuarantineEntry]
BACKUP = BackupEntry

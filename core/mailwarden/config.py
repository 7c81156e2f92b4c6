"""The gateway's configuration: one TOML file decoded into msgspec Structs.

The core owns the sections below; every other top-level section belongs to the plugin that
declared it through ``mailwarden_config_schema``. An unknown key or a bad value is an error
that names the key and the line, because a silently ignored typo in a mail filter's config
is how mail gets lost.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .access import BUILTIN_ROLES, PERMISSIONS
from .errors import ConfigError
from .patterns import compile_rule_patterns

__all__ = [
    "CORE_SECTIONS",
    "ClamdConfig",
    "Config",
    "ContentFilterConfig",
    "DeliveryConfig",
    "DetectorsConfig",
    "DirectoryConfig",
    "DkimConfig",
    "DkimKeyConfig",
    "EventsConfig",
    "GatewayConfig",
    "GreylistingConfig",
    "HooksConfig",
    "HttpScanConfig",
    "MetricsConfig",
    "MilterConfig",
    "RateLimit",
    "RatelimitConfig",
    "RedisConfig",
    "RuleActions",
    "RuleConfig",
    "SmtpConfig",
    "SpamdConfig",
    "SpoolConfig",
    "StoresConfig",
    "TlsConfig",
    "default_home",
    "load_config",
    "parse_config",
]

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Positive = Annotated[int, msgspec.Meta(gt=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
# An address or CIDR network; the shape here (so an error names the key's line), the ranges in
# SmtpConfig.__post_init__.
Network = Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$")]
ActionName = Literal["deliver", "reject", "tempfail", "discard", "quarantine"]
# Antivirus statuses may also ``remove`` the parts they concern (delivering the rest with a
# notice) or ``tag`` the subject and deliver.
AvActionName = Literal["deliver", "reject", "tempfail", "discard", "quarantine", "remove", "tag"]


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class GatewayConfig(_Section):
    """``[gateway]``: where the gateway keeps its data, how it names itself, whom it runs as.

    Started as root with ``user`` (and ``group``), ``serve`` binds its ports, gives the home
    to that account and runs as it. Memory dumps are off unless ``core_dumps``; then they go
    to ``core_dumps_path``, each dump and the folder at most ``core_dumps_max_bytes``.
    ``event_loop``: what ``serve`` runs its event loop on: ``"uvloop"`` (libuv; asyncio's own
    loop when uvloop is not installed) or ``"asyncio"`` (the standard library's).
    """

    home: str = ""
    hostname: str = "mailwarden.localhost"
    # The organisation's own mail domains: rules' ``direction`` is decided from them. An entry
    # ``.example.org`` also covers every subdomain of example.org.
    local_domains: list[str] = msgspec.field(default_factory=list)
    # Started as root, ``serve`` binds its ports, gives the home to this account and switches
    # to it (``group``: its primary group unless set).
    user: str = ""
    group: str = ""
    # Memory dumps of crashed processes (they hold mail): off unless set, then into
    # ``core_dumps_path`` (relative to the home), each and all together at most the cap.
    core_dumps: bool = False
    core_dumps_path: str = "cores"
    core_dumps_max_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1 << 30
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"


class SmtpConfig(_Section):
    """``[smtp]``: the SMTP gateway listener.

    STARTTLS on ``port`` and implicit TLS on ``tls_port`` (0: off); more than ``max_connections``
    (or ``max_connections_per_ip``) open connections per worker get 421, and when the listener
    is full an idle connection of the address holding the most is closed to make room for
    another address; ``workers`` processes share the ports (0: one per core). ``timeout`` is
    the time allowed without a byte from the client (a slow transfer that keeps sending is
    never cut); after ``junk_command_limit`` NOOP, RSET, VRFY or HELP commands without a
    message the client gets 421.

    Relay control, as Postfix's ``smtpd_relay_restrictions``: a recipient in ``[gateway]
    local_domains`` is accepted from anyone; any other recipient only from a client in
    ``trusted_networks`` or after SMTP AUTH, else ``554 5.7.1 Relay access denied``. AUTH
    (PLAIN, LOGIN) is offered only over TLS and only when there is something to check the
    password against: the web interface's local accounts, or the directory (``[directory]``,
    an LDAP bind as the user) for names that are addresses. ``auth = false`` never offers it.
    Addresses in MAIL and RCPT must be RFC 5321 mailboxes (501). A message with more than
    ``hopcount_limit`` ``Received:`` lines (ours included) is a loop (554 5.4.6). With
    ``forbid_bare_newline`` a line ending in a bare LF from a client outside
    ``trusted_networks`` gets ``550 5.5.2`` and the connection is closed (Postfix's
    ``smtpd_forbid_bare_newline = reject`` with its default exclusion of ``$mynetworks``; it
    stops SMTP smuggling).
    """

    enabled: bool = True
    listen: str = "127.0.0.1"
    port: Port = 2525
    max_message_size: Positive = 50 * 1024 * 1024
    max_recipients: Positive = 1000
    timeout: Seconds = 300.0
    # STARTTLS on ``port`` and an implicit-TLS listener on ``tls_port`` (0: none); the
    # certificate comes from [tls] or is generated on first start.
    starttls: bool = True
    require_starttls: bool = False
    tls_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    max_connections: Positive = 200
    max_connections_per_ip: Positive = 50
    # Processes accepting on the same port (SO_REUSEPORT); 0 means one per core.
    workers: Annotated[int, msgspec.Meta(ge=0, le=256)] = 1
    trusted_networks: list[Network] = msgspec.field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"]
    )
    auth: bool = True
    hopcount_limit: Positive = 50
    forbid_bare_newline: bool = True
    junk_command_limit: Positive = 100
    # A balancer (HAProxy ``send-proxy-v2``) in front: every connection starts with a PROXY
    # protocol header (v1 or v2) naming the real client, accepted only from ``proxy_trusted``.
    proxy_protocol: bool = False
    proxy_trusted: list[Network] = msgspec.field(default_factory=list)
    proxy_timeout: Seconds = 10.0

    def __post_init__(self) -> None:
        _check_networks("trusted_networks", self.trusted_networks)
        _check_networks("proxy_trusted", self.proxy_trusted)
        if self.proxy_protocol and not self.proxy_trusted:
            raise ValueError(
                "proxy_protocol needs proxy_trusted: the balancers' addresses (anyone else "
                "could claim any client address)"
            )


def _check_networks(key: str, networks: list[str]) -> None:
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{key}: {network!r} is not an address or CIDR network") from None


class _ScanProtocolConfig(_Section):
    """What ``[clamd]``, ``[spamd]`` and ``[http_scan]`` share (docs/embedding.md).

    Off by default; on, a listener on ``listen:port`` answers clients in
    ``trusted_networks`` only. A message or stream above ``max_size`` bytes is refused with the
    protocol's error, more than ``max_connections`` open connections too, and ``timeout`` is
    the time allowed to wait for the client's next bytes.
    """

    enabled: bool = False
    listen: str = "127.0.0.1"
    max_size: Positive = 25 * 1024 * 1024
    max_connections: Positive = 100
    timeout: Seconds = 120.0
    trusted_networks: list[Network] = msgspec.field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"]
    )

    def __post_init__(self) -> None:
        _check_networks("trusted_networks", self.trusted_networks)


class ClamdConfig(_ScanProtocolConfig):
    """``[clamd]``: clamd's protocol (INSTREAM), for Exim's ``av_scanner = clamd:``,
    ``clamdscan --stream`` and other clamd clients (docs/embedding.md).

    Off by default; on, only clients in ``trusted_networks`` are served (others get the
    protocol's refusal), at most ``max_connections`` at once; ``timeout`` is the time allowed
    to wait for the client's next bytes. ``max_size`` is clamd's StreamMaxLength: a larger
    stream gets ``INSTREAM size limit exceeded. ERROR``. ``[spamd]`` and ``[http_scan]``
    have the same keys.
    """

    port: Port = 3310


class SpamdConfig(_ScanProtocolConfig):
    """``[spamd]``: SpamAssassin's spamd protocol, for Exim's ``spam =`` and ``spamc``; the
    keys of ``[clamd]`` (a message above ``max_size`` gets ``74 EX_IOERR``), and
    ``allow_tell``, which lets clients teach the Bayes classifier (``spamc -L``), as spamd's
    ``--allow-tell``."""

    port: Port = 10783
    allow_tell: bool = False


class HttpScanConfig(_ScanProtocolConfig):
    """``[http_scan]``: rspamd's HTTP scan API (``POST /checkv2``), for ``rspamc`` and
    rspamd integrations; the keys of ``[clamd]`` (a body above ``max_size`` gets 413)."""

    port: Port = 11333


class MilterConfig(_Section):
    """``[milter]``: the milter listener for Postfix (``smtpd_milters``) and Sendmail.

    Listens on ``listen:port``, or on the UNIX socket ``unix_socket`` (relative to the home)
    when set. A message above ``max_message_size`` bytes gets 552; ``timeout`` is the idle
    time allowed between two packets; while a message is scanned the MTA is told every
    ``progress_interval`` seconds that we are still working. ``quarantine = "store"`` keeps a
    quarantined message in our quarantine and discards it at the MTA; ``"hold"`` puts it in
    the MTA's hold queue (Postfix: ``postsuper -H`` releases it).
    """

    enabled: bool = False
    listen: str = "127.0.0.1"
    port: Port = 8891
    unix_socket: str = ""
    max_message_size: Positive = 50 * 1024 * 1024
    max_connections: Positive = 500
    timeout: Seconds = 300.0
    progress_interval: Seconds = 10.0
    quarantine: Literal["store", "hold"] = "store"


class ContentFilterConfig(_Section):
    """``[content_filter]``: Postfix's after-queue content filter (``content_filter``).

    An SMTP listener on ``listen:port`` that scans and sends what passes back to Postfix at
    ``reinject`` ("host:port", Postfix's re-injection smtpd), with XFORWARD attributes when
    that smtpd offers them (``xforward``). The 250 is given only once the re-injection was
    accepted; any failure is answered 451, so Postfix keeps the message and retries.
    """

    enabled: bool = False
    listen: str = "127.0.0.1"
    port: Port = 10025
    reinject: str = "127.0.0.1:10026"
    xforward: bool = True
    max_message_size: Positive = 50 * 1024 * 1024
    max_recipients: Positive = 1000
    max_connections: Positive = 100
    timeout: Seconds = 300.0
    reinject_timeout: Seconds = 60.0


class DeliveryConfig(_Section):
    """``[delivery]``: where accepted mail goes. ``maildir`` is relative to the home.

    ``relay`` sends it from the spool to ``next_hop`` with STARTTLS (``tls``), retrying with
    a delay doubling from ``retry_initial`` to ``retry_max_interval`` seconds; after
    ``max_age`` seconds, or at once on a 5xx, the sender gets a DSN. With
    ``connection_reuse`` a connection to the next hop carries up to ``connection_reuse_limit``
    messages; up to ``connection_idle_max`` wait at most ``connection_idle_timeout`` seconds
    for the next one.
    """

    mode: Literal["maildir", "relay"] = "maildir"
    maildir: str = "maildir"
    # ``relay``: SMTP to ``next_hop`` ("host:port" or "[host]:port"), from the spool.
    next_hop: str = ""
    tls: Literal["none", "opportunistic", "required"] = "opportunistic"
    tls_verify: bool = False
    tls_ca_file: str = ""
    connect_timeout: Seconds = 30.0
    concurrency: Positive = 20
    retry_initial: Seconds = 60.0
    retry_max_interval: Seconds = 3600.0
    max_age: Seconds = 5 * 86400.0
    queue_scan_interval: Seconds = 30.0
    # Connection caching as Postfix's scache: no connect, EHLO and TLS handshake per message.
    # The idle timeout stays well below the 5 minutes servers wait (RFC 5321 4.5.3.2.7).
    # As many may wait as deliveries run at once: fewer made a burst of ten sessions open
    # (and close) a connection for one message in eight.
    connection_reuse: bool = True
    connection_idle_timeout: Seconds = 20.0
    connection_idle_max: Positive = 20
    connection_reuse_limit: Positive = 100


class SpoolConfig(_Section):
    """``[spool]``: messages in flight, fsynced before the 250; relative to the home."""

    path: str = "spool"


class TlsConfig(_Section):
    """``[tls]``: the listener's certificate; empty paths mean a generated self-signed one."""

    cert_file: str = ""
    key_file: str = ""


class DkimKeyConfig(_Section):
    """One DKIM signing key: mail whose From domain is ``domain`` is signed with it."""

    domain: str
    selector: str
    key_file: str


class DkimConfig(_Section):
    """``[dkim]``: outbound signing keys (files 0600, made by ``mailwarden dkim keygen``)."""

    keys: list[DkimKeyConfig] = msgspec.field(default_factory=list)


class DetectorsConfig(_Section):
    """``[detectors]``: time budgets and which plugins run at all."""

    timeout: Seconds = 30.0
    timeouts: dict[str, Seconds] = msgspec.field(default_factory=dict)
    disabled: list[str] = msgspec.field(default_factory=list)
    isolated: list[str] = msgspec.field(default_factory=list)

    def budget(self, detector: str) -> float:
        """The time budget in seconds of one detector."""
        return self.timeouts.get(detector, self.timeout)


class HooksConfig(_Section):
    """``[hooks]``: time budgets in seconds of the plugin hooks other than scans.

    ``verdict`` and ``action`` bound all ``mailwarden_verdict`` / ``mailwarden_action``
    implementations of one message together; ``hold``, ``startup`` and ``shutdown`` each
    implementation, ``policy_step`` each ``mailwarden_policy_step`` call (a 451 when it runs out).
    A verdict that runs out (or fails) keeps the detectors' folded verdict with
    a ``HOOK_TIMEOUT`` error and is never delivered on that: at least a 451. ``message_processed``
    observers run on threads of their own, off the mail path; a call past its budget is logged
    and counted, and at most ``observer_backlog`` events wait for a slow observer (more are
    dropped for it and counted).
    """

    startup: Seconds = 120.0
    shutdown: Seconds = 5.0
    verdict: Seconds = 10.0
    action: Seconds = 10.0
    hold: Seconds = 30.0
    policy_step: Seconds = 10.0
    message_processed: Seconds = 2.0
    observer_backlog: Positive = 1000


class EventsConfig(_Section):
    """``[events]``: the message event log, and where events are also sent.

    ``json`` writes each message event as a JSON line to a file (``-``: standard output);
    ``syslog`` sends it to ``host:port`` over UDP as RFC 5424 (``syslog_format = "cef"``: the
    message is in ArcSight CEF), so existing log pipelines take it. Both empty: not sent.
    The ``json`` file (relative to the home) is rotated to ``.1`` at half of ``json_max_bytes``,
    so the two never hold more than that.
    """

    enabled: bool = True
    path: str = "events"
    retention_days: Annotated[float, msgspec.Meta(gt=0)] = 3.0
    max_bytes: Positive = 1 << 30
    json: str = ""
    # The JSON file and its rotated older half (``json`` + ``.1``) together at most this.
    json_max_bytes: Positive = 1 << 30
    syslog: str = ""
    syslog_format: Literal["rfc5424", "cef"] = "rfc5424"
    syslog_facility: Annotated[int, msgspec.Meta(ge=0, le=23)] = 16


class StoresConfig(_Section):
    """``[stores]``: the other stores of user data, their places (relative to the home) and
    limits. Every limit removes the oldest records when reached; ``traces`` is off unless
    diagnostics need it, because traces may hold message text. ``audit_max_bytes`` caps the
    web's JSON-lines copy of its acts (``web/audit.jsonl`` and its rotated ``.1``).
    """

    quarantine_max_bytes: Positive = 1 << 30
    backup_path: str = "backup"
    backup_max_bytes: Positive = 7 << 30
    app_log_path: str = "app-log"
    app_log_retention_days: Annotated[float, msgspec.Meta(gt=0)] = 1100.0
    app_log_max_bytes: Positive = 1 << 30
    auth_log_path: str = "auth-log"
    auth_log_retention_days: Annotated[float, msgspec.Meta(gt=0)] = 35.0
    # The web's JSON-lines copy of its acts (``web/audit.jsonl``; rotated like the export).
    audit_max_bytes: Positive = 64 << 20
    traces: bool = False
    traces_path: str = "traces"
    trace_max_bytes: Positive = 150 << 20
    statistics_path: str = "statistics"
    temp_path: str = "tmp"
    # How often limits are enforced while serving (the event log's size cap holds at every
    # write regardless).
    enforce_interval: Seconds = 60.0


class MetricsConfig(_Section):
    """``[metrics]``: Prometheus metrics at ``http://listen:port/metrics`` (``port = 0``: off)."""

    listen: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0


class RuleActions(_Section):
    """What a rule does for each status; the most severe applicable action wins.

    The antivirus statuses also take ``remove`` (the parts with that status are taken out and
    the rest delivered with a notice part) and ``tag`` (delivered with ``subject_tag``, where
    ``{status}`` is replaced, before the subject). With ``backup`` the gateway keeps a copy of
    the original in its backup store (``[stores] backup_*``) before an antivirus status or a
    malicious verdict (sandbox, reputation) changes or drops a message.

    Nothing that was not examined is delivered by default: ``corrupted`` and ``not_scanned``
    quarantine, ``error`` (a detector failed or ran out of time) answers 451 so the sender
    retries. A rule may still say ``deliver`` for them.

    ``malformed`` applies to a message whose MIME structure mail clients read differently
    (two ``Content-Type`` fields or ``boundary`` parameters, a comment in a header name, nested
    comments, a part outside the boundaries: the ``MIME_AMBIGUOUS`` finding). Every reading is
    scanned, so the default delivers; ``quarantine`` or ``reject`` refuses the evasion itself.
    """

    infected: AvActionName = "reject"
    suspicious: AvActionName = "reject"
    encrypted: AvActionName = "deliver"
    corrupted: AvActionName = "quarantine"
    not_scanned: AvActionName = "quarantine"
    spam: ActionName = "reject"
    probable_spam: ActionName = "deliver"
    bulk: ActionName = "deliver"
    blocked: ActionName = "reject"
    malicious: ActionName = "reject"
    error: ActionName = "tempfail"
    malformed: ActionName = "deliver"
    clean: ActionName = "deliver"
    subject_tag: str = "[{status}]"
    backup: bool = True


class ContentRules(_Section):
    """``[rules.content]``: what a rule blocks by attachment name, detected type and size.

    ``names`` are file-name masks (``*`` / ``?``, case-insensitive) matched against attachment
    names and the names of members of zip and tar archives, nested up to ``archive_depth``.
    ``double_extensions`` blocks names like ``invoice.pdf.exe`` whose last extension runs code.
    ``types`` are detected types (from the bytes, never from headers or names), e.g. ``pe``,
    ``elf``, ``macho``, ``msi``, ``script``. Sizes are in bytes of decoded content; 0 is no
    limit. A match gives a ``blocked`` content status, handled by ``action``.
    """

    names: list[str] = msgspec.field(default_factory=list)
    double_extensions: bool = False
    types: list[str] = msgspec.field(default_factory=list)
    max_attachment_size: Annotated[int, msgspec.Meta(ge=0)] = 0
    max_message_size: Annotated[int, msgspec.Meta(ge=0)] = 0
    action: ActionName = "reject"
    archive_depth: Annotated[int, msgspec.Meta(ge=0, le=16)] = 3
    archive_members: Annotated[int, msgspec.Meta(ge=1)] = 1000
    # Nested archives are read whole to be listed; larger ones are judged by name and type only.
    nested_limit: Annotated[int, msgspec.Meta(ge=0)] = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        from mailwarden_native import FILE_TYPES

        # A misspelt type would block nothing without a word: refuse it and list the names.
        unknown = sorted({t.lower() for t in self.types} - FILE_TYPES)
        if unknown:
            raise ValueError(
                f"unknown detected types {unknown}; known: {', '.join(sorted(FILE_TYPES))}"
            )

    @property
    def active(self) -> bool:
        """Whether any content rule is set."""
        return bool(
            self.names
            or self.double_extensions
            or self.types
            or self.max_attachment_size
            or self.max_message_size
        )


class NotifyConfig(_Section):
    """``[rules.notify]``: who is told when the rule's action is taken for one of ``on``.

    ``on`` lists action reasons: a status (``infected``, ``spam``, ...), ``content``, ``error``
    or ``clean``. Notices come from the null sender with ``Auto-Submitted``; none is sent about
    automatic mail. ``sender`` is off by default because the senders of malware and spam are
    usually forged. ``templates`` is a directory with ``admin.txt``, ``sender.txt`` and
    ``recipient.txt`` replacing the built-in ones (``$subject``, ``$sender``, ``$recipients``,
    ``$action``, ``$reason``, ``$details``, ``$rule``, ``$id``, ``$time``, ``$message_id``,
    ``$attachments``, ``$hostname``).
    """

    on: list[str] = msgspec.field(
        default_factory=lambda: ["infected", "suspicious", "malicious", "content"]
    )
    admin: list[str] = msgspec.field(default_factory=list)
    sender: bool = False
    recipients: bool = False
    templates: str = ""
    from_address: str = ""


class RuleConfig(_Section):
    """One ``[[rules]]`` entry: which mail it covers, which detectors run, what each status does.

    ``senders`` and ``recipients`` are address patterns: a full address, ``*`` / ``?``
    wildcards, ``@domain`` (``@.domain``: the domain and its subdomains), ``re:`` a regular
    expression matched against the whole address, ``group:NAME`` a directory group by CN or DN
    (nested membership counts), ``<>`` the null sender. ``clients`` limits the rule to client
    addresses or networks (empty: any client); ``direction`` to inbound, outbound or internal
    mail as told by ``[gateway] local_domains``. The first rule that matches applies.
    """

    name: str
    senders: list[str] = msgspec.field(default_factory=lambda: ["*"])
    recipients: list[str] = msgspec.field(default_factory=lambda: ["*"])
    clients: list[str] = msgspec.field(default_factory=list)
    direction: Literal["any", "inbound", "outbound", "internal"] = "any"
    detectors: list[str] = msgspec.field(default_factory=lambda: ["*"])
    actions: RuleActions = msgspec.field(default_factory=RuleActions)
    content: ContentRules = msgspec.field(default_factory=ContentRules)
    notify: NotifyConfig = msgspec.field(default_factory=NotifyConfig)
    add_headers: bool = True
    reject_text: str = "Message rejected by policy"


class DirectoryConfig(_Section):
    """``[directory]``: the LDAP / Active Directory server rules' ``group:`` patterns ask.

    Addresses are resolved through ``mail`` and ``proxyAddresses`` (``smtp:`` aliases) of the
    entries ``user_filter`` selects under ``base_dn``; groups are the entries ``group_filter``
    selects, nested membership followed through ``member_attribute``. Answers are kept in a
    local cache, refreshed every ``refresh_interval`` seconds and used while the server is
    unreachable; with ``enabled = false`` the cache is deleted by the reload (SIGHUP) or start
    that turns the integration off.
    """

    enabled: bool = False
    url: str = "ldap://127.0.0.1:389"
    start_tls: bool = False
    # Certificate checks for ldaps:// and StartTLS; ``ca_file`` (PEM) instead of the system CAs.
    verify: bool = True
    ca_file: str = ""
    authentication: Literal["simple", "ntlm"] = "simple"
    # A service account; NTLM takes ``DOMAIN\user``. The password is read from
    # ``password_file`` (mode 0600) when set, which keeps it out of the config file.
    bind_dn: str = ""
    bind_password: str = ""
    password_file: str = ""
    base_dn: str = ""
    # AD users and contacts and OpenLDAP inetOrgPersons are all of class person; groups are
    # what has members, in AD (group) and OpenLDAP (groupOfNames) alike.
    user_filter: str = "(objectClass=person)"
    group_filter: str = "(member=*)"
    member_attribute: str = "member"
    member_of_attribute: str = "memberOf"
    refresh_interval: Seconds = 3600.0
    timeout: Seconds = 10.0
    cache_path: str = "directory-cache"

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not self.url.lower().startswith(("ldap://", "ldaps://")):
            raise ValueError(f"url must start with ldap:// or ldaps://, not {self.url!r}")
        if not self.base_dn:
            raise ValueError("base_dn is required when the directory is enabled")
        if self.start_tls and self.url.lower().startswith("ldaps://"):
            raise ValueError("start_tls is for ldap:// URLs; ldaps:// is TLS already")


class GreylistingConfig(_Section):
    """``[greylisting]``: a new (sender, recipient, client network) triplet is deferred.

    The first attempt of a triplet (the client's /``ipv4_prefix`` or /``ipv6_prefix``) gets
    ``451 4.7.1``; a retry after ``delay`` seconds and within ``retry_window`` seconds of the
    first is accepted, and the triplet then passes without delay for ``pass_expiry`` seconds
    after its last message. Never applied to authenticated clients, nor to clients in
    ``allow_networks`` or senders in ``allow_domains`` (``.example.org``: with subdomains);
    clients in ``[smtp] trusted_networks`` only when ``skip_trusted`` is false. Answered at
    RCPT by the SMTP gateway and at end of message by the milter; the after-queue content
    filter does not greylist (Postfix has accepted the message already). The triplets are in
    Redis when ``[redis]`` is enabled, else (and while Redis is down) in the local store.
    """

    enabled: bool = False
    delay: Seconds = 300.0
    retry_window: Seconds = 4 * 3600.0
    pass_expiry: Seconds = 36 * 86400.0
    ipv4_prefix: Annotated[int, msgspec.Meta(ge=8, le=32)] = 24
    ipv6_prefix: Annotated[int, msgspec.Meta(ge=16, le=128)] = 64
    allow_networks: list[Network] = msgspec.field(default_factory=list)
    allow_domains: list[str] = msgspec.field(default_factory=list)
    skip_trusted: bool = True

    def __post_init__(self) -> None:
        _check_networks("allow_networks", self.allow_networks)
        if self.retry_window <= self.delay:
            raise ValueError(
                f"retry_window ({self.retry_window:g} s) must be longer than delay "
                f"({self.delay:g} s): no retry could pass"
            )


class RateLimit(_Section):
    """One rate limit: at most ``messages`` and ``bytes`` per ``window`` seconds (0: no cap)."""

    messages: Annotated[int, msgspec.Meta(ge=0)] = 0
    bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
    window: Seconds = 3600.0


class RatelimitConfig(_Section):
    """``[ratelimit]``: messages and bytes per window, per sender, sender domain, client
    address and recipient (``[ratelimit.sender]``, ``.sender_domain``, ``.client``,
    ``.recipient``; each recipient of a message counts it once).

    A message over any limit gets ``451 4.7.1`` naming the limit, at the end of DATA (SMTP
    gateway) or of the message (milter); it still counts, so a sender that keeps trying stays
    refused. Windows slide: the count is the current window's plus the previous one's weighted
    by how much of it lies in the last ``window`` seconds, so a burst of the limit at a window's
    end is not followed by another at the next one's start. The null sender is not limited by
    sender or domain; clients in ``allow_networks`` are not limited. Counters are in Redis when
    ``[redis]`` is enabled (shared by every node), else (and while Redis is down) in the local
    store.
    """

    enabled: bool = False
    sender: RateLimit = msgspec.field(default_factory=RateLimit)
    sender_domain: RateLimit = msgspec.field(default_factory=RateLimit)
    client: RateLimit = msgspec.field(default_factory=RateLimit)
    recipient: RateLimit = msgspec.field(default_factory=RateLimit)
    allow_networks: list[Network] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        _check_networks("allow_networks", self.allow_networks)


class RedisConfig(_Section):
    """``[redis]``: state shared by every node (greylisting triplets, rate-limit counters).

    ``url`` is ``redis://[:password@]host:port/db`` (``rediss://`` for TLS) and ``prefix``
    starts every key, so nodes of one cluster share it and other clusters do not. An operation
    gets ``timeout`` seconds; after ``breaker_failures`` failures in a row the node stops
    asking Redis for ``breaker_reset`` seconds and goes on with its local store (the metric
    ``mailwarden_shared_state_redis`` is 0 and the log says so), then tries again.
    ``local_max_entries`` caps the local store (greylisting triplets and counters; the ones
    expiring first go when it is full), which is also the whole state without Redis.
    """

    enabled: bool = False
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "mailwarden:"
    timeout: Seconds = 0.5
    breaker_failures: Positive = 3
    breaker_reset: Seconds = 30.0
    local_path: str = "policy-state"
    local_max_entries: Positive = 1_000_000

    def __post_init__(self) -> None:
        if not self.url.lower().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"url must start with redis://, rediss:// or unix://, not {self.url!r}"
            )


class ClusterNode(_Section):
    """One node of ``[cluster] nodes``: its ``name`` and the ``url`` of its web interface."""

    name: str
    url: str


class ClusterConfig(_Section):
    """``[cluster]``: one console over every node (docs/cluster.md).

    ``nodes`` lists every node (this one too) by ``name`` and web ``url``; ``name`` says which
    one this is (default: ``[gateway] hostname``). Nodes sign their requests to each other with
    HMAC-SHA256 under the shared ``secret`` (or the first line of ``secret_file``, mode 0600),
    at least 16 characters, the same on every node. The console asks every node at once and
    waits ``timeout`` seconds for each; ``ca_file`` verifies the nodes' HTTPS certificates
    (empty: ``tls_ca``, else the system's CAs). Instead of (or besides) the secret, mutual TLS:
    ``tls_cert``/``tls_key`` is this node's certificate (common name: its name), presented to
    the others, and a node API request needs a client certificate signed by ``tls_ca``.
    """

    name: str = ""
    nodes: list[ClusterNode] = msgspec.field(default_factory=list)
    secret: str = ""
    secret_file: str = ""
    timeout: Seconds = 3.0
    ca_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""

    def __post_init__(self) -> None:
        names = [node.name for node in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"nodes: node names must differ, got {names}")
        for node in self.nodes:
            if not node.url.startswith(("https://", "http://")):
                raise ValueError(
                    f"nodes: node {node.name!r} url must be http(s)://, not {node.url!r}"
                )
        tls = [bool(self.tls_cert), bool(self.tls_key), bool(self.tls_ca)]
        if any(tls) and not all(tls):
            raise ValueError("mutual TLS needs tls_cert, tls_key and tls_ca together")
        if self.nodes and not (self.secret or self.secret_file or all(tls)):
            raise ValueError(
                "nodes need a shared secret (secret or secret_file) or mutual TLS "
                "(tls_cert, tls_key, tls_ca)"
            )
        if self.secret and len(self.secret) < 16:
            raise ValueError("secret must be at least 16 characters")


def _default_rules() -> list[RuleConfig]:
    return [RuleConfig(name="default")]


class WebConfig(_Section):
    """``[web]``: the web interface and REST API, served by ``mailwarden serve``.

    HTTPS with the ``[tls]`` pair (a self-signed one is generated until you configure yours).
    ``roles`` adds custom roles (name -> permissions); ``groups`` gives directory users roles
    by group (``"group:CN or DN"`` -> role names), nested membership included. After
    ``login_attempts`` failed logins within 15 minutes from one client address (an IPv6
    /64), logins from there wait; the account stays open to its owner elsewhere.
    ``login_bind`` is how a directory user's password is checked:
    ``simple`` (bind as the entry's DN), ``ntlm`` (bind as ``DOMAIN\\sAMAccountName``, domain
    from ``ntlm_domain`` or the ``[directory] bind_dn``), or ``auto``: NTLM where the server's
    root DSE offers it (Active Directory), else simple. ``digest_hours`` (0: off; 24: daily)
    sends each recipient with spam held since the last digest a mail listing it, from
    ``digest_from``, with release and delete links under ``digest_url`` (how users reach this
    interface) that work for ``digest_link_days`` without a login.
    """

    enabled: bool = False
    listen: str = "127.0.0.1"
    port: Port = 8443
    tls: bool = True
    session_hours: Annotated[float, msgspec.Meta(gt=0, le=720)] = 8.0
    login_attempts: Annotated[int, msgspec.Meta(ge=1)] = 5
    login_bind: Literal["simple", "ntlm", "auto"] = "auto"
    ntlm_domain: str = ""
    roles: dict[str, list[str]] = msgspec.field(default_factory=dict)
    groups: dict[str, list[str]] = msgspec.field(default_factory=dict)
    digest_hours: Annotated[float, msgspec.Meta(ge=0, le=24 * 31)] = 0.0
    digest_url: str = ""
    digest_from: str = ""
    digest_link_days: Annotated[float, msgspec.Meta(gt=0, le=90)] = 7.0

    def __post_init__(self) -> None:
        if self.digest_hours and not self.digest_url.startswith(("https://", "http://")):
            raise ValueError("digest_url (https://... as users reach the web interface) is needed")

        for role, permissions in self.roles.items():
            unknown = sorted(set(permissions) - set(PERMISSIONS))
            if unknown:
                raise ValueError(f"role {role!r} has unknown permissions {unknown}")
        known = set(BUILTIN_ROLES) | set(self.roles)
        for group, roles in self.groups.items():
            if not group.startswith("group:"):
                raise ValueError(f"groups keys look like 'group:NAME', not {group!r}")
            unknown = sorted(set(roles) - known)
            if unknown:
                raise ValueError(f"{group!r} maps to unknown roles {unknown}")


class Config(_Section):
    """The whole configuration. ``plugins`` holds each plugin's decoded section by name."""

    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    smtp: SmtpConfig = msgspec.field(default_factory=SmtpConfig)
    milter: MilterConfig = msgspec.field(default_factory=MilterConfig)
    content_filter: ContentFilterConfig = msgspec.field(default_factory=ContentFilterConfig)
    clamd: ClamdConfig = msgspec.field(default_factory=ClamdConfig)
    spamd: SpamdConfig = msgspec.field(default_factory=SpamdConfig)
    http_scan: HttpScanConfig = msgspec.field(default_factory=HttpScanConfig)
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)
    detectors: DetectorsConfig = msgspec.field(default_factory=DetectorsConfig)
    hooks: HooksConfig = msgspec.field(default_factory=HooksConfig)
    events: EventsConfig = msgspec.field(default_factory=EventsConfig)
    stores: StoresConfig = msgspec.field(default_factory=StoresConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)
    dkim: DkimConfig = msgspec.field(default_factory=DkimConfig)
    directory: DirectoryConfig = msgspec.field(default_factory=DirectoryConfig)
    web: WebConfig = msgspec.field(default_factory=WebConfig)
    greylisting: GreylistingConfig = msgspec.field(default_factory=GreylistingConfig)
    ratelimit: RatelimitConfig = msgspec.field(default_factory=RatelimitConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    rules: list[RuleConfig] = msgspec.field(default_factory=_default_rules)
    plugins: dict[str, Any] = msgspec.field(default_factory=dict)
    source: str | None = None

    @property
    def home(self) -> Path:
        """The directory all stores live under."""
        return Path(self.gateway.home) if self.gateway.home else default_home()

    def path_in_home(self, value: str) -> Path:
        """``value`` if absolute, else resolved under :attr:`home`."""
        path = Path(value)
        return path if path.is_absolute() else self.home / path


CORE_SECTIONS: dict[str, type[Any]] = {
    "gateway": GatewayConfig,
    "smtp": SmtpConfig,
    "milter": MilterConfig,
    "content_filter": ContentFilterConfig,
    "clamd": ClamdConfig,
    "spamd": SpamdConfig,
    "http_scan": HttpScanConfig,
    "delivery": DeliveryConfig,
    "detectors": DetectorsConfig,
    "hooks": HooksConfig,
    "events": EventsConfig,
    "stores": StoresConfig,
    "metrics": MetricsConfig,
    "spool": SpoolConfig,
    "tls": TlsConfig,
    "dkim": DkimConfig,
    "directory": DirectoryConfig,
    "web": WebConfig,
    "greylisting": GreylistingConfig,
    "ratelimit": RatelimitConfig,
    "redis": RedisConfig,
    "cluster": ClusterConfig,
    "rules": list[RuleConfig],
}


def default_home() -> Path:
    """``$MAILWARDEN_HOME`` or ``./var``: where config and stores live by default."""
    return Path(os.environ.get("MAILWARDEN_HOME") or "var").absolute()


def load_config(
    path: str | os.PathLike[str] | None,
    plugin_schemas: Mapping[str, type[msgspec.Struct]] | None = None,
) -> Config:
    """Read and validate a config file; ``None`` gives the embedded defaults."""
    if path is None:
        return parse_config("", plugin_schemas, source=None)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", path=str(path)) from exc
    config = parse_config(text, plugin_schemas, source=str(path))
    if not config.gateway.home:
        # A relative or absent home is taken relative to the config file's folder, so a config
        # means the same thing whatever directory the gateway is started from.
        config.gateway.home = str(Path(path).absolute().parent)
    elif not Path(config.gateway.home).is_absolute():
        config.gateway.home = str(Path(path).absolute().parent / config.gateway.home)
    return config


def parse_config(
    text: str,
    plugin_schemas: Mapping[str, type[msgspec.Struct]] | None = None,
    *,
    source: str | None = None,
) -> Config:
    """Validate TOML ``text``; every error names the key and, when it can be found, the line."""
    schemas = dict(plugin_schemas or {})
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        raise ConfigError(f"invalid TOML: {exc}", path=source, line=line) from exc

    core: dict[str, Any] = {}
    plugins: dict[str, Any] = {}
    for key, value in data.items():
        if key in CORE_SECTIONS:
            core[key] = value
        elif key in schemas:
            plugins[key] = _convert(value, schemas[key], text, [key], source)
        else:
            known = sorted([*CORE_SECTIONS, *schemas])
            raise ConfigError(
                f"unknown section or key {key!r} (known: {', '.join(known)})",
                path=source,
                key=key,
                line=locate_key(text, [key]),
            )
    for name, schema in schemas.items():
        plugins.setdefault(name, _convert({}, schema, text, [name], source))

    config: Config = _convert(core, Config, text, [], source)
    config.plugins = plugins
    config.source = source
    names = [rule.name for rule in config.rules]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise ConfigError(
                f"duplicate rule name {name!r}",
                path=source,
                key=f"rules[{index}].name",
                line=locate_key(text, ["rules", index, "name"]),
            )
    # Patterns are compiled now so that a bad regex or network is reported with its line
    # instead of failing on the first message.
    compile_rule_patterns(
        config.rules,
        config.gateway.local_domains,
        locate=lambda steps: locate_key(text, steps),
        source=source,
    )
    return config


_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN_RE = re.compile(r"unknown field `(?P<field>[^`]+)`")
_STEP_RE = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _convert(value: Any, typ: Any, text: str, prefix: list[str | int], source: str | None) -> Any:
    try:
        return msgspec.convert(value, typ, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        steps: list[str | int] = list(prefix)
        match = _PATH_RE.search(message)
        if match:
            for name, index in _STEP_RE.findall(match["path"]):
                if index == "...":
                    # msgspec does not say which key of a table failed; point at the table.
                    break
                steps.append(int(index) if index else name)
            message = message[: match.start()]
        unknown = _UNKNOWN_RE.search(message)
        if unknown:
            steps.append(unknown["field"])
        key = _format_key(steps)
        raise ConfigError(
            message, path=source, key=key or None, line=locate_key(text, steps)
        ) from exc


def _format_key(steps: list[str | int]) -> str:
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _line_from_message(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match[1]) if match else None


_TABLE_RE = re.compile(r"^\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_ARRAY_RE = re.compile(r"^\[\[\s*([^\[\]]+?)\s*\]\]\s*(#.*)?$")
_KEY_RE = re.compile(
    r"""^((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


def _split_key(key: str) -> list[str]:
    parts = re.findall(r""""([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+)""", key)
    return [a or b or c for a, b, c in parts]


def _with_indexes(keys: list[str], arrays: dict[tuple[str | int, ...], int]) -> list[str | int]:
    # [rules.actions] after [[rules]] means "the actions of the last rule so far".
    path: list[str | int] = []
    for key in keys:
        path.append(key)
        if tuple(path) in arrays:
            path.append(arrays[tuple(path)])
    return path


def locate_key(text: str, steps: list[str | int]) -> int | None:
    """The 1-based line where the key at ``steps`` is written, else its nearest enclosing table.

    tomllib keeps no positions, so this walks table headers and ``key =`` lines the way a TOML
    reader would. Inline tables and multi-line values are attributed to the line their key is on.
    """
    target = list(steps)
    current: list[str | int] = []
    arrays: dict[tuple[str | int, ...], int] = {}
    best_line: int | None = None
    best_depth = 0
    in_multiline: str | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if in_multiline:
            if in_multiline in stripped:
                in_multiline = None
            continue
        if not stripped or stripped.startswith("#"):
            continue
        if m := _ARRAY_RE.match(stripped):
            keys = _split_key(m[1])
            base = (*_with_indexes(keys[:-1], arrays), keys[-1])
            arrays[base] = arrays.get(base, -1) + 1
            current = [*base, arrays[base]]
        elif m := _TABLE_RE.match(stripped):
            current = _with_indexes(_split_key(m[1]), arrays)
        elif m := _KEY_RE.match(stripped):
            full = current + list(_split_key(m[1]))
            for quote in ('"""', "'''"):
                if stripped.count(quote) == 1:
                    in_multiline = quote
            if full == target[: len(full)] and len(full) > best_depth:
                best_line, best_depth = lineno, len(full)
            continue
        else:
            continue
        if current == target[: len(current)] and len(current) >= best_depth and current:
            best_line, best_depth = lineno, len(current)
    return best_line

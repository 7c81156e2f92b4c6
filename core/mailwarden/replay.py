"""Shadow replay: what a candidate config would have done to mail the gateway already handled.

Stored mail (the gateway's backups and quarantine, or a Maildir, an mbox, a folder or files)
is scanned by a gateway on the candidate config whose home is a temporary folder: nothing is
delivered, recorded or held, and the real home is only read. Each message's envelope and the
recorded outcome come from the message event log (matched by Message-ID); the stores' own
envelopes are used where the log has none.
"""

from __future__ import annotations

import email.parser
import email.policy
import mailbox
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec

from mailwarden_sdk import Envelope, MessageEvent

from .config import Config, load_config
from .events import EventQuery, MessageEventLog
from .pipeline import Gateway
from .plugins import build_plugin_manager
from .quarantine import Quarantine
from .stores.backup import BackupStore

__all__ = ["Outcome", "ReplayReport", "Replayed", "replay", "stored_messages"]


class Outcome(msgspec.Struct, kw_only=True, frozen=True):
    """What happened (or would happen) to one message."""

    action: str
    rule: str
    antivirus: str
    spam: str
    spam_score: float
    content: str | None = None


class Replayed(msgspec.Struct, kw_only=True, frozen=True):
    """One replayed message: where it came from, what was recorded, what the candidate does."""

    source: str
    message_id: str | None
    mail_from: str
    rcpt_to: list[str]
    subject: str | None
    recorded: Outcome | None
    candidate: Outcome

    @property
    def action_changed(self) -> bool:
        """The candidate's action differs from the recorded one."""
        return self.recorded is not None and self.recorded.action != self.candidate.action

    @property
    def verdict_changed(self) -> bool:
        """The candidate's verdict statuses differ from the recorded ones."""
        if self.recorded is None:
            return False
        before, after = self.recorded, self.candidate
        return (before.antivirus, before.spam, before.content) != (
            after.antivirus,
            after.spam,
            after.content,
        )


class ReplayReport(msgspec.Struct, kw_only=True):
    """Every replayed message and the counts of what changed."""

    messages: list[Replayed]

    def counts(self) -> dict[str, int]:
        """How many were replayed, changed action, changed verdict only, had no record."""
        return {
            "replayed": len(self.messages),
            "action_changed": sum(m.action_changed for m in self.messages),
            "verdict_changed_only": sum(
                m.verdict_changed and not m.action_changed for m in self.messages
            ),
            "unchanged": sum(
                m.recorded is not None and not m.action_changed and not m.verdict_changed
                for m in self.messages
            ),
            "not_recorded": sum(m.recorded is None for m in self.messages),
        }

    def changes(self) -> list[Replayed]:
        """The messages whose action or verdict differs, or that have no recorded outcome."""
        return [
            m for m in self.messages if m.action_changed or m.verdict_changed or m.recorded is None
        ]

    def to_builtins(self) -> dict[str, object]:
        """The report as JSON-ready data: counts, then each differing message."""
        return {
            "counts": self.counts(),
            "messages": [
                {
                    **msgspec.to_builtins(m),
                    "action_changed": m.action_changed,
                    "verdict_changed": m.verdict_changed,
                }
                for m in self.changes()
            ],
        }


def _from_files(path: Path) -> Iterator[tuple[str, bytes, Envelope | None]]:
    if path.is_dir():
        if (path / "cur").is_dir() and (path / "new").is_dir():
            files = sorted([*(path / "new").iterdir(), *(path / "cur").iterdir()])
        else:
            files = sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            yield str(file), file.read_bytes(), None
        return
    with path.open("rb") as handle:
        mbox = handle.read(5) == b"From "
    if not mbox:
        yield str(path), path.read_bytes(), None
        return
    box = mailbox.mbox(path, create=False)
    try:
        for key, message in box.items():
            yield f"{path}#{key}", message.as_bytes(), None
    finally:
        box.close()


def stored_messages(
    config: Config, paths: list[Path], *, backups: bool, quarantine: bool
) -> Iterator[tuple[str, bytes, Envelope | None]]:
    """(source, raw message, envelope when the store kept one) of everything to replay."""
    for path in paths:
        yield from _from_files(path)
    root = config.path_in_home(config.stores.backup_path)
    if backups and root.is_dir():  # opening a store that is not there would make it
        store = BackupStore(root, max_bytes=None)
        try:
            for entry in store.list(limit=None):
                envelope = Envelope(mail_from=entry.mail_from, rcpt_to=list(entry.rcpt_to))
                yield f"backup:{entry.id}", store.get(entry.id), envelope
        finally:
            store.index.close()
    if quarantine and (config.home / "quarantine").is_dir():
        held = Quarantine(config.home / "quarantine")
        # messages(), not held(): that one recovers stale releases, a write.
        for path in held.messages():
            raw, envelope = held.original(path.name)
            yield f"quarantine:{path.name}", raw, envelope


def _message_id(raw: bytes) -> str | None:
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    value = parser.parsebytes(raw).get("Message-ID")
    return str(value).strip() if value else None


def _recorded(log: MessageEventLog | None, message_id: str | None) -> MessageEvent | None:
    if log is None or not message_id:
        return None
    found = log.search(EventQuery(message_id=message_id, limit=1))
    return found[0] if found else None


def replay(
    recorded_config: Config,
    candidate_path: str | None,
    paths: list[Path],
    *,
    backups: bool = False,
    quarantine: bool = False,
) -> ReplayReport:
    """Scan the stored mail with the candidate config and compare with what was recorded."""
    import asyncio

    events = recorded_config.path_in_home(recorded_config.events.path)
    log = MessageEventLog(events, retention_days=None, max_bytes=None) if events.is_dir() else None
    plugins = build_plugin_manager()
    candidate = load_config(candidate_path, plugins.config_schemas())

    async def run(home: str) -> list[Replayed]:
        # The candidate's stores all live in the scratch home: it acts on nothing real.
        scratch = msgspec.structs.replace(candidate.gateway, home=home)
        config = msgspec.structs.replace(candidate, gateway=scratch)
        done: list[Replayed] = []
        async with Gateway(config, plugins=plugins) as gateway:
            for source, raw, stored in stored_messages(
                recorded_config, paths, backups=backups, quarantine=quarantine
            ):
                message_id = _message_id(raw)
                event = _recorded(log, message_id)
                if event is not None:
                    envelope = Envelope(
                        mail_from=event.mail_from,
                        rcpt_to=list(event.rcpt_to),
                        client_address=event.client_address,
                        helo=event.helo,
                    )
                else:
                    envelope = stored or Envelope()
                decision = await gateway.scan(raw, envelope)
                verdict = decision.verdict
                done.append(
                    Replayed(
                        source=source,
                        message_id=message_id,
                        mail_from=envelope.mail_from,
                        rcpt_to=list(envelope.rcpt_to),
                        subject=event.subject if event else None,
                        recorded=_outcome(event) if event else None,
                        candidate=Outcome(
                            action=decision.action.kind.value,
                            rule=decision.rule.name,
                            antivirus=verdict.antivirus.value,
                            spam=verdict.spam.value,
                            spam_score=round(verdict.spam_score, 2),
                            content=verdict.content,
                        ),
                    )
                )
        return done

    try:
        with tempfile.TemporaryDirectory(prefix="mailwarden-replay-") as home:
            return ReplayReport(messages=asyncio.run(run(home)))
    finally:
        if log is not None:
            log.close()


def _outcome(event: MessageEvent) -> Outcome:
    verdict = event.verdict
    return Outcome(
        action=event.action.value,
        rule=event.rule,
        antivirus=verdict.antivirus.value,
        spam=verdict.spam.value,
        spam_score=round(verdict.spam_score, 2),
        content=verdict.content,
    )

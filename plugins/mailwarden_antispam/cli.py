"""``mailwarden antispam ...``: Bayes training and the spam quarantine from the command line.

The commands work on the plugin's data directory as the gateway configured by ``--config``
(else ``$MAILWARDEN_CONFIG``, else ``<home>/mailwarden.toml``) has it, through the SDK's
``command_host``: the same folders the running gateway uses, wherever ``[gateway] home`` points.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import time
from pathlib import Path

import click
import msgspec

from mailwarden_sdk import Envelope, command_host, config_option, plugin_data_dir, shared_state
from mailwarden_sdk.timeparse import TIME_FORMS, TimeParam

from .bayes import Bayes, band
from .quarantine import QuarantineError, SpamQuarantine


def _data_dir(config_path: str | None) -> Path:
    return plugin_data_dir(command_host(config_path), "antispam")


def _bayes(config_path: str | None) -> Bayes:
    """This node's Bayes store; with ``[redis]`` the cluster's counts learn too, as the
    gateway's do (when Redis does not answer, the lesson stays on this node, with a warning)."""
    host = command_host(config_path)
    bayes = Bayes(plugin_data_dir(host, "antispam") / "bayes")
    bayes.shared = shared_state(host)
    return bayes


def _messages(directory: str) -> list[Path]:
    root = Path(directory)
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in this environment (containers)
        return "cli"


@click.group("antispam")
def antispam() -> None:
    """Antispam: train the Bayes classifier, work with the spam quarantine."""


@antispam.command()
@click.option("--spam", "spam_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--ham", "ham_dir", type=click.Path(exists=True, file_okay=False))
@config_option
def train(spam_dir: str | None, ham_dir: str | None, config_path: str | None) -> None:
    """Learn every file under --spam as spam and under --ham as ham."""
    if not spam_dir and not ham_dir:
        raise click.UsageError("give --spam DIR and/or --ham DIR")
    bayes = _bayes(config_path)
    try:
        for label, directory in (("spam", spam_dir), ("ham", ham_dir)):
            if not directory:
                continue
            files = _messages(directory)
            learned = sum(bayes.learn(p.read_bytes(), label, _who()) for p in files)
            click.echo(f"{label}: learned {learned} of {len(files)} messages")
        nspam, nham = bayes.counts()
        click.echo(f"total: {nspam} spam, {nham} ham")
    finally:
        bayes.close()


@antispam.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@config_option
def untrain(paths: tuple[str, ...], config_path: str | None) -> None:
    """Forget what the given messages (files or directories) taught."""
    bayes = _bayes(config_path)
    try:
        files = [q for p in paths for q in (_messages(p) if Path(p).is_dir() else [Path(p)])]
        forgotten = sum(bayes.unlearn(p.read_bytes(), _who()) for p in files)
        click.echo(f"unlearned {forgotten} of {len(files)} messages")
        nspam, nham = bayes.counts()
        click.echo(f"total: {nspam} spam, {nham} ham")
    finally:
        bayes.close()


@antispam.command()
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@config_option
def journal(as_json: bool, config_path: str | None) -> None:
    """Every learning act: when, who, what, which message."""
    bayes = Bayes(_data_dir(config_path) / "bayes")
    try:
        for r in bayes.journal():
            if as_json:
                click.echo(msgspec.json.encode(r).decode())
                continue
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.time))
            click.echo(f"{stamp}Z {r.who} {r.action} {r.label} {r.digest[:16]} {r.message_id}")
    finally:
        bayes.close()


@antispam.group()
def quarantine() -> None:
    """The spam quarantine: list, release, delete, release and learn as ham."""


def _quarantine(config_path: str | None) -> SpamQuarantine:
    return SpamQuarantine(command_host(config_path).data_dir)


@quarantine.command("list")
@click.option("--sender")
@click.option("--recipient")
@click.option("--subject")
@click.option("--min-score", type=float)
@click.option("--since", type=TimeParam(), help=f"Held at or after it: {TIME_FORMS}.")
@click.option("--until", type=TimeParam(), help="Held before it (same forms as --since).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@config_option
def list_(
    sender: str | None,
    recipient: str | None,
    subject: str | None,
    min_score: float | None,
    since: float | None,
    until: float | None,
    as_json: bool,
    config_path: str | None,
) -> None:
    """Held messages, oldest first."""
    q = _quarantine(config_path)
    try:
        for e in q.search(since, until, sender, recipient, subject, min_score):
            if as_json:
                click.echo(msgspec.json.encode(e).decode())
                continue
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.time))
            click.echo(
                f"{e.id} {stamp}Z {e.score:6.1f} {e.mail_from or '<>'} -> "
                f"{','.join(e.rcpt_to)} subject: {e.subject or '-'}"
                + (f" [being released by process {e.claimed_by}]" if e.claim else "")
            )
    finally:
        q.close()


@quarantine.command()
@click.argument("entry_id")
@click.option(
    "--host", help="SMTP to this next hop (default port 25) instead of the gateway's delivery."
)
@click.option("--port", type=int, help="SMTP to this port (of --host, else 127.0.0.1) instead.")
@click.option("--learn-ham", is_flag=True, help="Also learn the message as ham.")
@config_option
def release(
    entry_id: str, host: str | None, port: int | None, learn_ham: bool, config_path: str | None
) -> None:
    """Send a held message on with its original envelope and bytes (once: while another
    release sends it, or after it did, this fails and sends nothing).

    By default it goes the way the gateway delivers ([delivery] mode: its Maildir, or its
    relay queue); --host / --port send it by SMTP to that next hop instead."""
    q = _quarantine(config_path)
    try:
        raw = q.original(entry_id)
        if host is not None or port is not None:
            host, port = host or "127.0.0.1", port or 25
            q.release(entry_id, host, port)
            where = f"to {host}:{port}"
        else:
            where = _deliver(q, entry_id, config_path)
    except QuarantineError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        q.close()
    click.echo(f"released {entry_id} {where}")
    if learn_ham:
        _learn(config_path, raw, "ham")
        click.echo("learned as ham")


def _deliver(q: SpamQuarantine, entry_id: str, config_path: str | None) -> str:
    """Release through the gateway's own delivery (``Host.deliver``), once."""
    claim = q.claim(entry_id)
    entry = claim.entry
    envelope = Envelope(mail_from=entry.mail_from, rcpt_to=list(entry.rcpt_to))
    try:
        host = command_host(config_path)

        async def deliver() -> str:
            return await host.deliver(claim.raw, envelope)

        where = asyncio.run(deliver())
    except Exception as exc:
        q.abandon(claim)
        raise QuarantineError(f"release of {entry_id} failed: {exc}; it stays held") from exc
    except BaseException:
        q.abandon(claim)
        raise
    q.finish(claim)
    return where


@quarantine.command()
@click.argument("entry_id")
@click.option("--learn-spam", is_flag=True, help="Learn the message as spam first.")
@config_option
def delete(entry_id: str, learn_spam: bool, config_path: str | None) -> None:
    """Remove a held message (with --learn-spam: "delete as spam", Bayes learns it first)."""
    q = _quarantine(config_path)
    try:
        raw = q.original(entry_id) if learn_spam else b""
        if learn_spam:
            _learn(config_path, raw, "spam")
        q.delete(entry_id)
    except QuarantineError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        q.close()
    click.echo(f"deleted {entry_id}" + (" (learned as spam)" if learn_spam else ""))


def _learn(config_path: str | None, raw: bytes, label: str) -> None:
    bayes = _bayes(config_path)
    try:
        bayes.learn(raw, label, _who())
    finally:
        bayes.close()


@antispam.command()
@click.option(
    "--labels",
    "label_sources",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="LABELS.csv (path,label[,group]) or a directory of spam*/…ham… folders; repeatable.",
)
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2, 20))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--bayes/--no-bayes", default=True, show_default=True, help="Fit the Bayes bands.")
@click.option("--rule-file", "rule_files", multiple=True, help="Also load these rule files.")
@click.option("--threshold", default=5.0, show_default=True, type=float)
@click.option("--write", "write_to", type=click.Path(dir_okay=False, path_type=Path))
def fit(
    label_sources: tuple[Path, ...],
    folds: int,
    seed: int,
    bayes: bool,
    rule_files: tuple[str, ...],
    threshold: float,
    write_to: Path | None,
) -> None:
    """Learn every rule's score from labelled mail (logistic regression), print k-fold
    cross-validated precision, recall and false-positive rate, and write the scores."""
    from . import fit as fitting

    try:
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise click.ClickException("fit needs scikit-learn: pip install 'mailwarden[fit]'") from exc
    samples = [s for src in label_sources for s in fitting.read_labels(src)]
    if not samples or {s.label for s in samples} != {"spam", "ham"}:
        raise click.UsageError("the labels give no spam or no ham")
    hits, nice, rules = fitting.rule_hits(samples, list(rule_files))
    fold = fitting.folds_of(samples, folds, seed)
    if bayes:
        raws = [s.path.read_bytes() for s in samples]
        labels = [s.label for s in samples]
        found = fitting.bayes_probabilities(raws, labels, fold, progress=click.echo)
        for h, probability in zip(hits, found, strict=True):
            if probability is not None:
                h.add(band(probability))
    nspam = sum(s.label == "spam" for s in samples)
    click.echo(f"{len(samples)} messages: {nspam} spam, {len(samples) - nspam} ham; {folds} folds")
    results, _flagged = fitting.cross_validate(samples, hits, fold, nice, threshold)
    figures = [r.line() for r in results]
    figures.append(fitting.summary(results).line().replace("fold 0", "all folds"))
    for line in figures:
        click.echo(line)
    model = fitting.fit_scores(hits, [s.label for s in samples], nice, threshold)
    click.echo(f"fitted {len(model.scores)} scores on all {len(samples)} messages")
    if write_to is not None:
        command = (
            "mailwarden antispam fit "
            + " ".join(f"--labels {_portable(p)}" for p in label_sources)
            + f" --folds {folds} --seed {seed}"
            + ("" if bayes else " --no-bayes")
            + f" --write {_portable(write_to)}"
        )
        write_to.write_text(fitting.scores_file(model, rules, command, figures))
        click.echo(f"wrote {write_to}")


def _portable(path: Path) -> str:
    # Relative paths keep the recorded command the same on every checkout.
    return os.path.relpath(path.resolve(), Path.cwd().resolve())


@antispam.group("rules")
def rules_group() -> None:
    """The antispam rule set: fetch a signed channel of rules."""


@rules_group.command("update")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@config_option
def rules_update(timeout: float, config_path: str | None) -> None:
    """Fetch, verify and install the rule channel at [antispam] update_url, as sa-update does.

    Exit status as sa-update's: 0 new rules installed, 1 nothing new, 4 refused (unreachable,
    unsigned, bad signature, damaged, or rules that do not load: the installed rules stay).
    A running gateway loads the new rules within seconds, with no restart.
    """
    from . import AntispamConfig
    from .update import UpdateError, update_rules

    host = command_host(config_path)
    config: AntispamConfig = host.config_for("antispam") or AntispamConfig()
    root = plugin_data_dir(host, "antispam") / "rules-update"
    try:
        result = update_rules(config.update_url, config.update_public_key, root, timeout)
    except UpdateError as exc:
        click.echo(f"rules update refused: {exc}; the installed rules stay", err=True)
        raise SystemExit(4) from None
    if not result.changed:
        click.echo(f"rules {result.version} are current ({result.rules} rules)")
        raise SystemExit(1)
    click.echo(f"installed rules {result.version}: {result.rules} rules in {result.path}")

"""One command-line grammar: times, enum values, JSON listings, no reprs, homes, scan output."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.cli import cli
from mailwarden.pipeline import Gateway
from mailwarden_antispam.quarantine import SpamQuarantine
from mailwarden_sdk import Envelope
from mailwarden_sdk.timeparse import TimeParam, parse_time
from tests.conftest import ROOT, make_message

NOW = 1_765_000_000.0


def _run(
    *args: str, home: Path | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAILWARDEN_HOME", "MAILWARDEN_CONFIG")}
    if home is not None:
        env["MAILWARDEN_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "mailwarden", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


# -- the time grammar ----------------------------------------------------------------------


@given(
    parts=st.lists(
        st.tuples(st.integers(0, 500), st.sampled_from("smhdw")), min_size=1, max_size=4
    ),
    ago=st.booleans(),
)
def test_an_age_is_that_long_before_now(parts: list[tuple[int, str]], ago: bool) -> None:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = "".join(f"{n}{u}" for n, u in parts) + (" ago" if ago else "")
    assert parse_time(text, now=NOW) == NOW - sum(n * units[u] for n, u in parts)


def test_iso_unix_and_named_times() -> None:
    assert parse_time("2025-12-06T05:46:40Z", now=NOW) == NOW
    assert parse_time("2025-12-06T06:46:40+01:00", now=NOW) == NOW
    assert parse_time("1765000000", now=0) == NOW
    assert parse_time("now", now=NOW) == NOW
    midnight = dt.datetime.fromtimestamp(NOW).replace(hour=0, minute=0, second=0).timestamp()
    assert parse_time("today", now=NOW) == midnight
    assert parse_time("Yesterday", now=NOW) == midnight - 86400


@pytest.mark.parametrize("bad", ["", "2x", "h", "-2h", "ago", "2h ago ago", "tomorrowish"])
def test_anything_else_is_refused_naming_the_forms(bad: str) -> None:
    with pytest.raises(ValueError, match=r"an age .* ISO date/time or a Unix time"):
        parse_time(bad, now=NOW)


def _commands(
    group: click.Group, ctx: click.Context, path: str = ""
) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            found += _commands(command, ctx, f"{path}{name} ")
        else:
            found.append((f"{path}{name}", command))
    return found


ALL = _commands(cli, click.Context(cli))


def test_every_since_and_until_takes_the_one_grammar() -> None:
    options = [
        (name, p.name)
        for name, command in ALL
        for p in command.params
        if isinstance(p, click.Option) and p.name in ("since", "until")
    ]
    assert ("events", "since") in options and ("antispam quarantine list", "since") in options
    wrong = [
        (name, p.name)
        for name, command in ALL
        for p in command.params
        if p.name in ("since", "until") and not isinstance(p.type, TimeParam)
    ]
    assert wrong == []


LISTINGS = ("list", "search", "journal", "events", "plugins", "info", "stats", "data-inventory")


def test_every_listing_command_has_json() -> None:
    listings = [name for name, _ in ALL if name.split()[-1] in LISTINGS]
    assert len(listings) >= 9, listings
    missing = [
        name
        for name, command in ALL
        if name.split()[-1] in LISTINGS and not any(p.name == "as_json" for p in command.params)
    ]
    assert missing == []


# -- events and the spam quarantine from the shell ------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "mailwarden.toml").write_text(f'[gateway]\nhome = "{home}"\n')
    return home


def _record(home: Path) -> None:
    """One delivered message without a Subject field in the home's event log."""

    async def main() -> None:
        async with Gateway.from_file(str(home / "mailwarden.toml")) as gateway:
            raw = b"From: a@example.org\r\nTo: b@example.net\r\n\r\nhello\r\n"
            await gateway.process(
                raw, Envelope(mail_from="a@example.org", rcpt_to=["b@example.net"])
            )

    asyncio.run(main())


def test_events_refuses_an_unknown_status_listing_the_valid_ones(home: Path) -> None:
    result = CliRunner().invoke(
        cli, ["events", "--config", str(home / "mailwarden.toml"), "--status", "bogus"]
    )
    assert result.exit_code == 2
    assert "'bogus' is not one of" in result.output
    assert "'infected'" in result.output and "'probable_spam'" in result.output


def test_events_text_shows_no_python_repr_and_takes_ages(home: Path) -> None:
    _record(home)
    config = str(home / "mailwarden.toml")
    result = CliRunner().invoke(cli, ["events", "--config", config, "--since", "1h"])
    assert result.exit_code == 0, result.output
    line = result.output.strip()
    assert "subject: -" in line and "None" not in line and "'" not in line
    later = CliRunner().invoke(cli, ["events", "--config", config, "--since", "now"])
    assert later.output.strip() == ""
    bad = CliRunner().invoke(cli, ["events", "--config", config, "--until", "soon"])
    assert bad.exit_code == 2 and "an ISO date/time or a Unix time" in bad.output


def _spam_store(home: Path) -> tuple[SpamQuarantine, str]:
    store = SpamQuarantine(home)
    raw = make_message(subject="cheap pills", body="Buy now\r\n")
    entry_id = store.put(
        raw, "spammer@example.org", ["bob@example.net"], "cheap pills", 12.0, "spam"
    )
    assert entry_id is not None
    return store, entry_id


def test_quarantine_list_takes_the_events_grammar_and_json(home: Path) -> None:
    store, entry_id = _spam_store(home)
    store.close()
    config = ["--config", str(home / "mailwarden.toml")]
    runner = CliRunner()
    listed = runner.invoke(cli, ["antispam", "quarantine", "list", "--since", "2h", *config])
    assert listed.exit_code == 0, listed.output
    assert entry_id in listed.output and "subject: cheap pills" in listed.output
    assert "'" not in listed.output
    none = runner.invoke(cli, ["antispam", "quarantine", "list", "--until", "1h ago", *config])
    assert none.exit_code == 0 and none.output == ""
    as_json = runner.invoke(cli, ["antispam", "quarantine", "list", "--json", *config])
    assert json.loads(as_json.output)["id"] == entry_id


def test_release_goes_through_the_gateways_maildir_by_default(home: Path) -> None:
    store, entry_id = _spam_store(home)
    store.close()
    config = ["--config", str(home / "mailwarden.toml")]
    result = CliRunner().invoke(cli, ["antispam", "quarantine", "release", entry_id, *config])
    assert result.exit_code == 0, result.output
    delivered = list((home / "maildir" / "new").iterdir())
    assert len(delivered) == 1 and b"cheap pills" in delivered[0].read_bytes()
    again = CliRunner().invoke(cli, ["antispam", "quarantine", "release", entry_id, *config])
    assert again.exit_code != 0
    assert len(list((home / "maildir" / "new").iterdir())) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["web", "password", "--user", "bob", "--role", "Admin", "--password", "long enough one"],
        ["web", "token", "robot", "--role", "Auditor", "--role", "bogus"],
    ],
)
def test_web_commands_refuse_an_unknown_role_listing_the_roles(home: Path, args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, "--config", str(home / "mailwarden.toml")])
    assert result.exit_code == 2, result.output
    assert "is not a role; roles: Administrator, Auditor, Operator" in result.output
    assert "[" not in result.output.splitlines()[-1]  # no Python list
    users = home / "web" / "users.json"
    assert not users.exists() or "bob" not in users.read_text()


def test_release_in_relay_mode_queues_for_the_running_gateways_relay(home: Path) -> None:
    from mailwarden.spool import Spool

    config = home / "mailwarden.toml"
    config.write_text(config.read_text() + '[delivery]\nmode = "relay"\nnext_hop = "127.0.0.1:2"\n')
    store, entry_id = _spam_store(home)
    store.close()
    result = CliRunner().invoke(
        cli, ["antispam", "quarantine", "release", entry_id, "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "relay queue" in result.output
    spool = Spool(home / "spool")
    (queued,) = spool.ids()
    state = spool.load_state(queued)
    # Decided (not scanned again) and not yet tried: the gateway's queue sends it next scan.
    assert state.decided and state.attempts == 0
    assert b"cheap pills" in next((home / "spool").rglob(f"{queued}.msg")).read_bytes()
    assert not (home / "maildir").exists()


# -- homes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["events"],
        ["data-inventory"],
        ["antispam", "quarantine", "list"],
        ["web", "token", "ci", "--role", "admin"],
        ["serve"],
    ],
)
def test_a_command_run_where_there_is_no_home_refuses_and_makes_none(
    tmp_path: Path, args: list[str]
) -> None:
    result = _run(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert f"{tmp_path / 'var'} does not exist" in result.stderr
    assert "MAILWARDEN_HOME" in result.stderr
    assert list(tmp_path.iterdir()) == []


# -- scan ------------------------------------------------------------------------------------


def test_scan_streams_and_reports_a_non_message_file(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(make_message(subject="first", body="hi\r\n"))
    (tmp_path / "LABELS.csv").write_text("file,label\na.eml,ham\n")
    pipe = tmp_path / "z-pipe"
    os.mkfifo(pipe)
    env = {k: v for k, v in os.environ.items() if k != "MAILWARDEN_HOME"}
    process = subprocess.Popen(
        [sys.executable, "-m", "mailwarden", "scan", "--json", "a.eml", "LABELS.csv", "z-pipe"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        # The last file is a pipe nobody writes to yet: the first results must be out before.
        deadline = time.monotonic() + 90
        while len(lines) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert len(lines) == 2, (lines, process.poll())
        first, labels = (json.loads(line) for line in lines)
        assert first["file"] == "a.eml" and first["action"] == "deliver"
        assert labels["file"] == "LABELS.csv" and labels["verdict"]["antivirus"] == "clean"
        assert labels["not_message"].startswith("not a message")
        assert "not_message" not in first
        pipe.write_bytes(make_message(subject="last", body="bye\r\n"))
        assert process.wait(timeout=60) == 0
        reader.join(timeout=10)
        assert [json.loads(line)["file"] for line in lines] == ["a.eml", "LABELS.csv", "z-pipe"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # Without a home the scan used a temporary one: nothing made in the folder it ran in.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LABELS.csv", "a.eml", "z-pipe"]


# -- serve: IPv6 addresses and bind errors ---------------------------------------------------


def _free_port_v6() -> int:
    import socket

    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        return int(probe.getsockname()[1])


def test_serve_brackets_ipv6_and_a_bind_error_names_the_listener(tmp_path: Path) -> None:
    port = _free_port_v6()
    homes = [tmp_path / "one", tmp_path / "two"]
    for home in homes:
        home.mkdir()
        (home / "mailwarden.toml").write_text(
            f'[smtp]\nlisten = "::1"\nport = {port}\n[web]\nenabled = false\n'
        )
    log = tmp_path / "first.log"
    env = {**os.environ, "MAILWARDEN_HOME": str(homes[0])}
    with log.open("w") as out:
        first = subprocess.Popen(
            [sys.executable, "-m", "mailwarden", "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "ready" not in log.read_text() and time.monotonic() < deadline:
            assert first.poll() is None, log.read_text()
            time.sleep(0.2)
        assert f"smtp     [::1]:{port}  (gateway listener)" in log.read_text()
        second = _run("serve", home=homes[1])
        assert second.returncode == 2
        assert f"smtp listener [::1]:{port}" in second.stderr, second.stderr
    finally:
        first.terminate()
        first.wait(timeout=60)


def test_scan_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    import pty

    for name in ("a.eml", "b.eml"):
        (tmp_path / name).write_bytes(make_message(subject=name, body="hi\r\n"))
    env = {k: v for k, v in os.environ.items() if k != "MAILWARDEN_HOME"}
    command = [sys.executable, "-m", "mailwarden", "scan", "a.eml", "b.eml"]
    piped = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert piped.returncode == 0 and "[1/2]" not in piped.stderr + piped.stdout
    master, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=terminal, text=True
        )
        out, _ = process.communicate(timeout=120)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert process.returncode == 0
    assert b"[1/2] a.eml" in shown and b"[2/2] b.eml" in shown
    # The rows themselves stay on stdout, clean of progress.
    assert out == piped.stdout

"""The directory integration against a real OpenLDAP shaped like Active Directory.

One slapd per module (tests/services/slapd.py): Alice (secondary address a.smith@) is in
Sales, Sales is in Staff; Carol is in a Loop1 <-> Loop2 membership cycle; Dan is a contact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailwarden import Gateway
from mailwarden.cli import cli
from mailwarden.config import load_config
from mailwarden.directory.service import cache_path, open_directory
from mailwarden.errors import ConfigError
from mailwarden.inventory import core_stores
from mailwarden.testing import scan
from mailwarden_sdk import ActionKind, Envelope
from tests.conftest import make_message
from tests.services.slapd import ALICE_SID, BASE_DN, Slapd, directory_section, running_slapd

pytestmark = pytest.mark.integration

RULES = """
[[rules]]
name = "staff"
recipients = ["group:Staff"]
detectors = []

[rules.actions]
clean = "quarantine"

[[rules]]
name = "default"
detectors = []
"""


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    with running_slapd() as server:
        yield server


def _config(tmp_path: Path, slapd: Slapd, rules: str = RULES, **extra: object) -> Path:
    path = tmp_path / "mailwarden.toml"
    path.write_text(directory_section(slapd, **extra) + rules)
    return path


def _rule(config: Path, recipient: str, sender: str = "x@outside.test") -> str:
    async def run() -> str:
        async with Gateway.from_file(str(config), entry_points=False) as gateway:
            return gateway.rule_for(sender, recipient).name

    return asyncio.run(run())


def test_rule_on_nested_group_matches_recipient_by_secondary_address(
    slapd: Slapd, tmp_path: Path
) -> None:
    config = _config(tmp_path, slapd)
    envelope = Envelope(mail_from="x@outside.test", rcpt_to=["A.Smith@example.test"])
    decision = scan(
        make_message(recipient="a.smith@example.test"),
        config=config.read_text(),
        envelope=envelope,
        home=tmp_path,
    )
    assert decision.rule.name == "staff"
    assert decision.action.kind is ActionKind.QUARANTINE
    # Bob is in Staff directly; Carol is in no group under Staff; strangers are in none.
    assert _rule(config, "bob@example.test") == "staff"
    assert _rule(config, "carol@example.test") == "default"
    assert _rule(config, "nobody@example.test") == "default"


def test_group_by_dn_and_sender_groups(slapd: Slapd, tmp_path: Path) -> None:
    rules = f"""
[[rules]]
name = "sales-out"
senders = ["group:cn=Sales, ou=Groups, {BASE_DN.upper()}"]
detectors = []

[[rules]]
name = "default"
detectors = []
"""
    config = _config(tmp_path, slapd, rules)
    assert _rule(config, "someone@else.test", sender="alice@example.test") == "sales-out"
    assert _rule(config, "someone@else.test", sender="bob@example.test") == "default"


def test_entry_attributes_contacts_and_membership_cycles(slapd: Slapd, tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, slapd))
    directory = open_directory(cfg)
    assert directory is not None
    try:
        alice = directory.lookup("a.smith@example.test").entry
        assert alice is not None
        assert alice.addresses == ["alice@example.test", "a.smith@example.test"]
        assert (alice.sam_account_name, alice.user_principal_name, alice.object_sid) == (
            "alice",
            "alice@corp.example.test",
            ALICE_SID,
        )
        assert sorted(g.cn for g in alice.groups) == ["Sales", "Staff"]
        dan = directory.lookup("DAN@partner.test").entry
        assert dan is not None and dan.kind == "contact"
        assert [g.cn for g in dan.groups] == ["Finance"]
        # Loop1 and Loop2 contain each other: both the live walk and the snapshot end.
        carol = directory.lookup("carol@example.test").entry
        assert carol is not None
        assert sorted(g.cn for g in carol.groups) == ["Finance", "Loop1", "Loop2"]
        assert {"cn:loop1", "cn:loop2", "cn:finance"} <= directory.groups_of("carol@example.test")
    finally:
        directory.close()


def test_ldap_injection_in_an_address_matches_nothing(slapd: Slapd, tmp_path: Path) -> None:
    config = _config(tmp_path, slapd)
    cfg = load_config(config)
    directory = open_directory(cfg)
    assert directory is not None
    try:
        hostile = "*)(uid=*"
        assert directory.lookup(hostile).entry is None
        assert directory.lookup(f"{hostile}@example.test").entry is None
        assert directory.groups_of(hostile) == frozenset()
    finally:
        directory.close()
    assert _rule(config, "*)(cn=*") == "default"
    # What slapd received: the value escaped, never a filter of its own.
    received = [f for f in slapd.filters() if "uid=" in f]
    assert received, "slapd logged no search for the hostile address"
    for search_filter in received:
        assert "(mail=\\2A\\29\\28uid=\\2A" in search_filter
        assert "(uid=*)" not in search_filter


def test_cached_answer_is_used_while_slapd_is_stopped(slapd: Slapd, tmp_path: Path) -> None:
    config = _config(tmp_path, slapd)
    assert _rule(config, "a.smith@example.test") == "staff"  # start-up fills the cache
    slapd.stop()
    try:
        # A fresh gateway start cannot reach the server: the rules still see the groups.
        assert _rule(config, "a.smith@example.test") == "staff"
        directory = open_directory(load_config(config))
        assert directory is not None
        try:
            result = directory.lookup("a.smith@example.test")
        finally:
            directory.close()
        assert result.source == "cache" and result.error
        assert result.entry is not None and result.entry.cn == "Alice Smith"
        output = (
            CliRunner()
            .invoke(cli, ["directory", "lookup", "--config", str(config), "a.smith@example.test"])
            .output
        )
        assert "server unreachable" in output and "groups             Sales, Staff" in output
    finally:
        slapd.start()


def test_turning_the_integration_off_deletes_the_cache(slapd: Slapd, tmp_path: Path) -> None:
    config = _config(tmp_path, slapd)
    cfg = load_config(config)
    assert _rule(config, "bob@example.test") == "staff"
    store = next(s for s in core_stores(cfg) if s.name == "directory cache")
    assert store.read_permission == "settings.view"
    assert Path(store.path) == cache_path(cfg) and cache_path(cfg).is_dir()

    config.write_text(config.read_text().replace("enabled = true", "enabled = false"))
    assert _rule(config, "bob@example.test") == "default"
    assert not cache_path(cfg).exists()
    assert all(s.name != "directory cache" for s in core_stores(load_config(config)))


def test_periodic_refresh_picks_up_new_members(slapd: Slapd, tmp_path: Path) -> None:
    config = _config(tmp_path, slapd, refresh_interval=0.2)

    async def run() -> tuple[str, str]:
        async with Gateway.from_file(str(config), entry_points=False) as gateway:
            before = gateway.rule_for("x@outside.test", "carol@example.test").name
            slapd.ldapadd(
                f"dn: cn=Sales,ou=Groups,{BASE_DN}\nchangetype: modify\nadd: member\n"
                f"member: cn=Carol White,ou=Users,{BASE_DN}\n"
            )
            deadline = time.monotonic() + 5
            after = before
            while after == before and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                after = gateway.rule_for("x@outside.test", "carol@example.test").name
            return before, after

    try:
        assert asyncio.run(run()) == ("default", "staff")
    finally:
        slapd.ldapadd(
            f"dn: cn=Sales,ou=Groups,{BASE_DN}\nchangetype: modify\ndelete: member\n"
            f"member: cn=Carol White,ou=Users,{BASE_DN}\n"
        )


def test_refresh_search_and_lookup_commands(slapd: Slapd, tmp_path: Path) -> None:
    config = _config(tmp_path, slapd)
    runner = CliRunner()
    refreshed = runner.invoke(cli, ["directory", "refresh", "--config", str(config)])
    assert refreshed.exit_code == 0, refreshed.output
    assert refreshed.output.startswith("cached 4 users and contacts and 5 groups")
    found = runner.invoke(cli, ["directory", "search", "--config", str(config), "s"])
    names = [line.split()[1] for line in found.output.splitlines()]
    assert names == ["Sales", "Staff"]
    found = runner.invoke(cli, ["directory", "search", "--config", str(config), "A.SM"])
    assert "a.smith" not in found.output and "alice@example.test" in found.output
    missing = runner.invoke(cli, ["directory", "lookup", "--config", str(config), "x@y.test"])
    assert missing.exit_code == 1 and "not in the directory" in missing.output


def test_password_file_readable_by_others_is_refused(slapd: Slapd, tmp_path: Path) -> None:
    secret = tmp_path / "directory.password"
    secret.write_text("gatewaypw\n")
    secret.chmod(0o644)
    config = _config(tmp_path, slapd)
    config.write_text(
        config.read_text().replace(
            'bind_password = "gatewaypw"', 'password_file = "directory.password"'
        )
    )
    with pytest.raises(ConfigError, match="chmod 0600"):
        open_directory(load_config(config))
    secret.chmod(0o600)
    directory = open_directory(load_config(config))
    assert directory is not None
    try:
        assert "cn:staff" in directory.groups_of("bob@example.test")
    finally:
        directory.close()

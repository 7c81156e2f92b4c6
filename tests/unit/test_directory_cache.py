"""The directory cache as rules and the autocomplete see it (no server involved)."""

from __future__ import annotations

from pathlib import Path

from mailwarden.directory.cache import DirectoryCache, remove_cache
from mailwarden.directory.client import sid_to_string
from mailwarden.directory.model import DirectoryEntry, DirectoryGroup
from mailwarden.directory.names import group_key, normalize_dn, rdn_value

SALES = DirectoryGroup(dn="CN=Sales,OU=Groups,DC=x", cn="Sales")
STAFF = DirectoryGroup(dn="CN=Staff,OU=Groups,DC=x", cn="Staff")
ALICE = DirectoryEntry(
    dn="CN=Alice Smith,OU=Users,DC=x",
    cn="Alice Smith",
    addresses=["alice@x.test", "a.smith@x.test"],
    sam_account_name="alice",
    groups=[SALES, STAFF],
)


def test_entries_answer_by_every_address_and_a_refresh_replaces_everything(
    tmp_path: Path,
) -> None:
    cache = DirectoryCache(tmp_path / "dc")
    try:
        assert cache.refreshed_at() is None
        cache.replace_all([ALICE], [SALES, STAFF])
        assert cache.refreshed_at() is not None
        entry = cache.get("A.Smith@X.test")
        assert entry is not None and entry.dn == ALICE.dn
        assert {"cn:staff", "dn:cn=staff,ou=groups,dc=x"} <= entry.group_keys()
        cache.replace_all([], [SALES])
        assert cache.get("alice@x.test") is None and cache.count() == 0
    finally:
        cache.close()
    assert oct((tmp_path / "dc").stat().st_mode & 0o777) == "0o700"
    assert remove_cache(tmp_path / "dc") and not (tmp_path / "dc").exists()
    assert not remove_cache(tmp_path / "dc")


def test_autocomplete_by_name_address_and_account(tmp_path: Path) -> None:
    cache = DirectoryCache(tmp_path / "dc")
    try:
        cache.replace_all([ALICE], [SALES, STAFF])
        assert [h.name for h in cache.search("S")] == ["Sales", "Staff"]
        assert [h.name for h in cache.search("s", limit=1)] == ["Sales"]
        hits = cache.search("ALI")
        assert len(hits) == 1 and hits[0].kind == "user" and hits[0].address == "alice@x.test"
        assert [h.name for h in cache.search("a.smith")] == ["Alice Smith"]
        assert cache.search("zz") == []
    finally:
        cache.close()


def test_group_names_compare_like_the_servers_do() -> None:
    assert normalize_dn("CN=Sales , OU=Groups,DC=X") == "cn=sales,ou=groups,dc=x"
    assert group_key("CN=Sales, OU=Groups,DC=X") == group_key("cn=sales,ou=groups,dc=x")
    assert group_key(" Sales ") == "cn:sales"
    assert rdn_value("CN=Smith\\, John,OU=Users") == "Smith, John"
    raw = (
        bytes([1, 5])
        + (5).to_bytes(6, "big")
        + b"".join(n.to_bytes(4, "little") for n in (21, 1, 2, 3, 1104))
    )
    assert sid_to_string(raw) == "S-1-5-21-1-2-3-1104"


def test_removing_the_cache_never_touches_other_files(tmp_path: Path) -> None:
    DirectoryCache(tmp_path).close()  # cache_path pointed at a folder with other data
    (tmp_path / "mailwarden.toml").write_text("[gateway]\n")
    assert remove_cache(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mailwarden.toml"]
    assert not remove_cache(tmp_path / "never-created")

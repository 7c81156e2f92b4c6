"""The backup store through the API and pages: list and view with backup.view, download and
release with backup.manage; ids that try to leave the store reach nothing."""

from __future__ import annotations

import pytest

from tests.web.conftest import Web


def test_backups_are_listed_viewed_downloaded_and_released(web: Web) -> None:
    kept = web.backup(subject="quarterly figures")
    admin, csrf = web.login("administrator")
    listed = admin.get("/api/backup").json()
    assert [(b["id"], b["subject"], b["rcpt_to"]) for b in listed] == [
        (kept, "quarterly figures", ["bob@example.net"])
    ]
    entry = admin.get(f"/api/backup/{kept}").json()
    assert entry["reason"] == "infected" and entry["mail_from"] == "alice@example.org"
    assert entry["size"] > 0 and len(entry["sha256"]) == 64
    raw = admin.get(f"/api/backup/{kept}/raw")
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "application/octet-stream"
    assert raw.headers["content-disposition"].startswith("attachment")
    assert b"quarterly figures" in raw.content
    # Released: delivered to the recorded recipients, as it was kept; the copy stays.
    released = admin.post(f"/api/backup/{kept}/release", headers={"x-csrf-token": csrf})
    assert released.status_code == 200 and released.json()["released"].startswith("delivered")
    delivered = web.gateway.maildir.messages()
    assert len(delivered) == 1 and delivered[0].read_bytes().replace(
        b"\r\n", b"\n"
    ) == raw.content.replace(b"\r\n", b"\n")
    assert [b["id"] for b in admin.get("/api/backup").json()] == [kept]
    acts = [r["act"] for r in web.state.audit.records()]
    assert "backup.download" in acts and "backup.release" in acts
    assert [a.action for a in web.gateway.stores.app_log.search(actor="administrator")][:2] == [
        "backup.release",
        "backup.download",
    ]


def test_viewing_needs_backup_view_and_downloading_backup_manage(web: Web) -> None:
    kept = web.backup()
    for role in ("auditor", "operator"):
        client, csrf = web.login(role)
        assert client.get("/api/backup").status_code == 200
        assert client.get(f"/api/backup/{kept}").status_code == 200
        assert client.get(f"/backup/{kept}").status_code == 200
        assert client.get(f"/api/backup/{kept}/raw").status_code == 403
        assert (
            client.post(f"/api/backup/{kept}/release", headers={"x-csrf-token": csrf}).status_code
            == 403
        )
        # The page offers neither to those who may not.
        assert 'id="download"' not in client.get(f"/backup/{kept}").text
    officer, _ = web.login("security-officer")
    assert officer.get(f"/api/backup/{kept}/raw").status_code == 200
    assert 'id="download"' in officer.get(f"/backup/{kept}").text
    assert web.gateway.maildir.messages() == []


def test_release_from_the_page_needs_the_csrf_token(web: Web) -> None:
    kept = web.backup()
    admin, csrf = web.login("administrator")
    assert admin.post(f"/backup/{kept}/release", data={}).status_code == 403
    assert web.gateway.maildir.messages() == []
    done = admin.post(f"/backup/{kept}/release", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/backup"
    assert len(web.gateway.maildir.messages()) == 1


@pytest.mark.parametrize(
    "backup_id",
    [
        "../../mailwarden.toml",
        "..%2F..%2Fmailwarden.toml",
        "%2e%2e/web/users.json",
        "..",
        "a/b",
        "bodies",
        "index",
    ],
)
def test_path_traversal_in_backup_downloads_reaches_nothing(web: Web, backup_id: str) -> None:
    kept = web.backup()
    sha = web.gateway.stores.backup.entry(kept)
    assert sha is not None
    admin, csrf = web.login("administrator")
    for path in (f"/api/backup/{backup_id}/raw", f"/api/backup/{backup_id}"):
        answer = admin.get(path)
        assert answer.status_code == 404, path
        assert b"[web]" not in answer.content and b"scrypt" not in answer.content
        assert b"EICAR" not in answer.content
    # Nor does the body's own hash name a backup: only ids from the index do.
    assert admin.get(f"/api/backup/{sha.sha256}/raw").status_code == 404
    assert (
        admin.post(f"/api/backup/{backup_id}/release", headers={"x-csrf-token": csrf}).status_code
        == 404
    )
    assert web.gateway.maildir.messages() == []


def test_a_hostile_subject_on_the_backup_pages_is_text(web: Web) -> None:
    payload = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    kept = web.backup(subject=payload)
    client, _ = web.login("operator")
    for path in ("/backup", f"/backup/{kept}"):
        page = client.get(path)
        assert page.status_code == 200
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert" in page.text
    assert client.get(f"/api/backup/{kept}").json()["subject"] == payload

"""Quarantine pages (issue 22): search, bulk release and delete, a confirmation step before
anything is deleted (a real form, no script), and a notice saying what was done."""

from __future__ import annotations

import re

from tests.web.conftest import Web


def _notice(page: str) -> str:
    found = re.search(r'id="notice" role="status">([^<]+)<', page)
    return found.group(1) if found else ""


def test_bulk_release_says_how_many_and_search_narrows(web: Web) -> None:
    ids = [web.hold(f"invoice {i}") for i in range(3)]
    web.hold("holiday photos")
    client, csrf = web.login("operator")
    found = client.get("/quarantine", params={"q": "invoice"}).text
    assert found.count('name="id"') == 3 and "holiday photos" not in found
    assert "3 of 4 match" in found
    answer = client.post("/quarantine/bulk", data={"csrf": csrf, "act": "release", "id": ids})
    assert answer.status_code == 200 and answer.url.path == "/quarantine"
    assert _notice(answer.text) == "Released 3 messages."
    assert [h.subject for h in web.gateway.quarantine.held()] == ["holiday photos"]
    # The notice is shown once.
    assert _notice(client.get("/quarantine").text) == ""
    acts = [r["act"] for r in web.state.audit.records()]
    assert acts.count("quarantine.release") == 3


def test_delete_needs_a_confirmation_step(web: Web) -> None:
    first, second = web.hold("first"), web.hold("second")
    client, csrf = web.login("operator")
    # The bulk delete button leads to a confirmation naming the messages; nothing is gone yet.
    asked = client.post(
        "/quarantine/bulk", data={"csrf": csrf, "act": "delete", "id": [first, second]}
    )
    assert asked.status_code == 200 and 'id="confirm-delete"' in asked.text
    assert "first" in asked.text and "second" in asked.text
    assert len(web.gateway.quarantine.held()) == 2
    # So does the single Delete of a message's page.
    single = client.post(f"/quarantine/{first}/delete", data={"csrf": csrf})
    assert single.status_code == 200 and 'id="confirm-delete"' in single.text
    assert len(web.gateway.quarantine.held()) == 2
    # Confirming deletes, and says so.
    done = client.post(
        "/quarantine/bulk",
        data={"csrf": csrf, "act": "delete", "id": [first, second], "confirm": "yes"},
    )
    assert _notice(done.text) == "Deleted 2 messages."
    assert web.gateway.quarantine.held() == []


def test_spam_quarantine_bulk_release_and_learn_notice(web: Web) -> None:
    first, second = web.spam("offer one"), web.spam("offer two")
    client, csrf = web.login("operator")
    listing = client.get("/quarantines/spam").text
    assert 'id="bulk-release-as-ham"' in listing
    answer = client.post(
        "/quarantines/spam/bulk", data={"csrf": csrf, "act": "release-as-ham", "id": [first]}
    )
    assert _notice(answer.text) == "Released 1 message and learned it as not spam."
    _, spam = web.gateway.plugin_quarantines()["spam"]
    assert [e.id for e in spam.search("")] == [second]
    # An unknown id is counted as failed, not silently done.
    answer = client.post(
        "/quarantines/spam/bulk",
        data={"csrf": csrf, "act": "release", "id": ["nosuchentry0", second]},
    )
    assert _notice(answer.text) == "Released 1 message."
    assert "1 message could not be changed" in answer.text


def test_bulk_actions_need_queues_manage(web: Web) -> None:
    held = web.hold("kept")
    auditor, csrf = web.login("auditor")
    listing = auditor.get("/quarantine").text
    assert "kept" in listing and 'name="id"' not in listing and "bulk-release" not in listing
    refused = auditor.post("/quarantine/bulk", data={"csrf": csrf, "act": "release", "id": held})
    assert refused.status_code == 403
    operator, csrf = web.login("operator")
    # Without the CSRF token nothing happens either.
    assert operator.post("/quarantine/bulk", data={"act": "release", "id": held}).status_code == 403
    assert (
        operator.post(
            "/quarantine/bulk", data={"csrf": csrf, "act": "explode", "id": held}
        ).status_code
        == 400
    )
    assert [h.id for h in web.gateway.quarantine.held()] == [held]

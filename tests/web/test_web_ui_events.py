"""The events pages (issue 22): filters for every indexed field, paging, CSV/JSON export, and
a detail page with the findings, scores, timings and the SMTP reply."""

from __future__ import annotations

import csv
import io
import json
import re
import time

from mailwarden_sdk import Envelope
from tests.conftest import make_message
from tests.web.conftest import GTUBE, Web


def _process(web: Web, subject: str, sender: str, *, spam: bool = False, client: str = "") -> None:
    body = GTUBE.decode() + "\r\n" if spam else "hello\r\n"
    raw = make_message(subject=subject, body=body)
    envelope = Envelope(
        mail_from=sender, rcpt_to=["bob@example.net"], client_address=client or None
    )
    web.loop.run_until_complete(web.gateway.process(raw, envelope, ingress="smtp"))


def _subjects(page: str) -> list[str]:
    return re.findall(r'<td class="subject">([^<]*)', page)


def test_events_filter_by_every_indexed_field_and_page(web: Web) -> None:
    for i in range(7):
        _process(web, f"plain {i}", f"user{i}@example.org", client="192.0.2.7")
    _process(web, "=cmd|' /C calc'!A0", "spammer@example.com", spam=True, client="198.51.100.9")
    client, _ = web.login("operator")
    # Action (a choice list), verdict, sender by domain, client address, subject words.
    assert _subjects(client.get("/events", params={"action": "reject"}).text) == [
        "=cmd|&#39; /C calc&#39;!A0"
    ]
    assert len(_subjects(client.get("/events", params={"status": "spam"}).text)) == 1
    assert _subjects(client.get("/events", params={"sender": "user3@example.org"}).text) == [
        "plain 3"
    ]
    assert len(_subjects(client.get("/events", params={"client": "192.0.2.7"}).text)) == 7
    [event] = web.gateway.events.search()[:1]
    by_id = client.get("/events", params={"message_id": event.message_id or ""}).text
    assert _subjects(by_id) == ["=cmd|&#39; /C calc&#39;!A0"]
    # Time range: relative and absolute; a window in the future holds nothing.
    assert len(_subjects(client.get("/events", params={"since": "1h"}).text)) == 8
    later = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() + 7200))
    assert _subjects(client.get("/events", params={"since": later}).text) == []
    # The API takes the same time grammar.
    assert len(client.get("/api/events", params={"since": "1h"}).json()) == 8
    assert client.get("/api/events", params={"since": later}).json() == []
    assert client.get("/api/events", params={"until": "soon"}).status_code == 400
    # A filter that cannot be read is said next to its field and never widens the search.
    bad = client.get("/events", params={"action": "explode", "since": "yesterday-ish"}).text
    assert "action is one of deliver" in bad and "is not a time" in bad
    # Paging: 3 per page over 8 events, newest first, every event once.
    seen: list[str] = []
    page = client.get("/events", params={"per_page": "3"}).text
    for _ in range(5):
        seen += _subjects(page)
        older = re.search(r'href="/events\?([^"]+)" id="older"', page)
        if older is None:
            break
        page = client.get("/events?" + older.group(1).replace("&amp;", "&")).text
    assert len(seen) == 8 and len(set(seen)) == 8
    assert 'id="newer"' in page


def test_events_export_csv_and_json_follow_the_filters(web: Web) -> None:
    _process(web, "=HYPERLINK(evil)", "+attacker@example.com", spam=True)
    _process(web, "fine", "alice@example.org")
    client, _ = web.login("auditor")
    answer = client.get("/events/export", params={"format": "csv", "action": "reject"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(rows) == 1
    # Attacker-chosen text cannot become a spreadsheet formula.
    assert rows[0]["subject"] == "'=HYPERLINK(evil)"
    assert rows[0]["mail_from"] == "'+attacker@example.com"
    assert rows[0]["reply"].startswith("550")
    every = json.loads(client.get("/events/export", params={"format": "json"}).content)
    assert sorted(e["subject"] for e in every) == ["=HYPERLINK(evil)", "fine"]
    assert client.get("/events/export", params={"format": "xml"}).status_code == 400
    assert client.get("/events/export", params={"since": "soon"}).status_code == 400
    # The export is audited.
    assert "events.export" in [r["act"] for r in web.state.audit.records()]


def test_event_detail_shows_findings_scores_timings_and_reply(web: Web) -> None:
    _process(web, "cheap pills", "spammer@example.com", spam=True)
    client, _ = web.login("operator")
    listing = client.get("/events").text
    link = re.search(r'class="detail" href="([^"]+)"', listing)
    assert link, listing
    page = client.get(link.group(1).replace("&amp;", "&"))
    assert page.status_code == 200
    text = page.text
    assert "GTUBE" in text and "+1000.00" in text  # the finding with its score
    assert re.search(r'id="reply">550 5\.7\.1', text)  # the reply the client got
    assert "detector.antispam" in text  # per-detector timing
    # Found without the time hint too; an unknown id is a 404.
    event_id = web.gateway.events.search()[0].id
    assert client.get(f"/events/{event_id}").status_code == 200
    assert client.get("/events/" + "f" * 32).status_code == 404


def test_event_routes_need_the_events_permission(web: Web) -> None:
    _process(web, "x", "a@example.org")
    event_id = web.gateway.events.search()[0].id
    web.state.auth.set_password("helpdesk", "correct horse battery", roles=[])
    client, _ = web.login("helpdesk")
    for path in ("/events", "/events/export", f"/events/{event_id}"):
        assert client.get(path).status_code == 403, path
    anonymous = web.client()
    assert anonymous.get(f"/events/{event_id}", follow_redirects=False).status_code == 303

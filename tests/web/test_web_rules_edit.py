"""Rules edited on the rules page (issue 22): a dry run lists exactly the recent messages the
candidate rules would treat differently (and changes nothing), errors stand beside the editor
with the key and line, Save writes the file and applies at once, and only rules.edit saves."""

from __future__ import annotations

import html
import re
import tomllib

from mailwarden.events import EventQuery
from mailwarden_sdk import Envelope
from tests.conftest import make_message
from tests.web.conftest import GTUBE, Web

LENIENT = """[[rules]]
name = "lenient for bob"
recipients = ["bob@example.net"]

[rules.actions]
spam = "deliver"
infected = "quarantine"

[[rules]]
name = "default"

[rules.actions]
infected = "quarantine"
"""


def _send(web: Web, sender: str, recipient: str, subject: str, spam: bool) -> str:
    body = GTUBE.decode() + "\r\n" if spam else "hello\r\n"
    raw = make_message(subject=subject, body=body)
    envelope = Envelope(mail_from=sender, rcpt_to=[recipient])
    web.loop.run_until_complete(web.gateway.process(raw, envelope, ingress="smtp"))
    [event] = web.gateway.events.search(EventQuery(subject=subject))
    return str(event.action)


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found
    return found.group(1)


def test_a_dry_run_lists_exactly_the_messages_whose_action_changes(web: Web) -> None:
    assert _send(web, "spammer@spam.example", "bob@example.net", "spam for bob", True) == "reject"
    assert _send(web, "spammer@spam.example", "carol@example.net", "spam for carol", True) == (
        "reject"
    )
    assert _send(web, "alice@example.org", "bob@example.net", "hello bob", False) == "deliver"
    before = web.config_path.read_text()
    admin, _ = web.login("administrator")
    page = admin.get("/rules")
    assert page.status_code == 200 and 'name = "default"' in html.unescape(page.text)
    assert "PUT /api/rules" not in page.text
    run = admin.post("/rules/test", data={"csrf": _csrf(page.text), "rules": LENIENT})
    assert run.status_code == 200, run.text
    summary = re.search(r'id="dry-run-summary">([^<]+)<', run.text)
    assert summary and summary.group(1) == "1 of the last 3 messages would change action."
    rows = re.findall(r"<tr>\s*<td class=\"time\">.*?</tr>", run.text, re.S)
    assert len(rows) == 1 and "spam for bob" in rows[0]
    assert "default: reject" in rows[0] and "lenient for bob: deliver" in rows[0]
    # The editor keeps the candidate; nothing was written or applied.
    assert "lenient for bob" in run.text
    assert web.config_path.read_text() == before
    assert [r.name for r in web.gateway.config.rules] == ["default"]


def test_saving_rules_writes_the_file_and_applies_them_at_once(web: Web) -> None:
    admin, _ = web.login("administrator")
    csrf = _csrf(admin.get("/rules").text)
    saved = admin.post("/rules", data={"csrf": csrf, "rules": LENIENT}, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == "/rules?saved=2"
    assert "Saved 2 rules" in admin.get("/rules?saved=2").text
    text = web.config_path.read_text()
    assert "# hand-written comment that an API edit must keep" in text
    assert [r["name"] for r in tomllib.loads(text)["rules"]] == ["lenient for bob", "default"]
    assert _send(web, "spammer@spam.example", "bob@example.net", "after save", True) == "deliver"
    assert _send(web, "spammer@spam.example", "carol@example.net", "still out", True) == "reject"
    assert [r["act"] for r in web.state.audit.records()].count("rules.edit") == 1


def test_a_bad_rule_is_refused_beside_the_editor_with_its_key_and_line(web: Web) -> None:
    admin, _ = web.login("administrator")
    csrf = _csrf(admin.get("/rules").text)
    before = web.config_path.read_text()
    bad = LENIENT.replace('spam = "deliver"', 'spam = "explode"')
    for path in ("/rules", "/rules/test"):
        answer = admin.post(path, data={"csrf": csrf, "rules": bad})
        assert answer.status_code == 422, answer.text
        error = re.search(r'id="rules-error" role="alert">([^<]+)<', answer.text)
        assert error and "rules[0].actions.spam" in error.group(1), answer.text
        assert "rules:6:" in error.group(1)  # the line in the editor's text
        assert "explode" in answer.text  # what was typed is kept
    other = admin.post("/rules/test", data={"csrf": csrf, "rules": "[web]\nenabled = false\n"})
    assert other.status_code == 422 and "only [[rules]]" in other.text
    assert web.config_path.read_text() == before


def test_only_rules_edit_saves_while_rules_view_may_try(web: Web) -> None:
    operator, _ = web.login("operator")
    page = operator.get("/rules")
    assert "save-rules" not in page.text and "dry-run" in page.text
    csrf = _csrf(page.text)
    assert operator.post("/rules/test", data={"csrf": csrf, "rules": LENIENT}).status_code == 200
    assert operator.post("/rules", data={"csrf": csrf, "rules": LENIENT}).status_code == 403
    assert [r.name for r in web.gateway.config.rules] == ["default"]

"""One shape per resource (issue 22): what ``GET /api/rules`` returns is what ``PUT`` takes
back; the old bare list is still accepted by PUT. And the dashboard's trends over each
period with the top lists and the spool depth."""

from __future__ import annotations

import re

from mailwarden_sdk import Envelope
from tests.conftest import make_message
from tests.web.conftest import GTUBE, Web


def test_rules_get_and_put_share_one_shape(web: Web) -> None:
    client, csrf = web.login("administrator")
    headers = {"x-csrf-token": csrf}
    got = client.get("/api/rules").json()
    assert [r["name"] for r in got["rules"]] == ["default"]
    got["rules"].insert(0, {"name": "lab", "recipients": ["@lab.example"]})
    put = client.put("/api/rules", json=got, headers=headers)
    assert put.status_code == 200, put.text
    assert put.json() == client.get("/api/rules").json()
    assert [r["name"] for r in put.json()["rules"]] == ["lab", "default"]
    # A bare list (what GET used to return) is still taken.
    bare = client.put("/api/rules", json=put.json()["rules"][1:], headers=headers)
    assert bare.status_code == 200 and [r.name for r in web.gateway.config.rules] == ["default"]
    assert client.put("/api/rules", json={"rule": []}, headers=headers).status_code == 400


def test_dashboard_trends_tops_and_spool(web: Web) -> None:
    for sender, body in (("a@spam.example", GTUBE.decode()), ("b@ok.example", "hi")):
        raw = make_message(subject="x", body=body + "\r\n")
        envelope = Envelope(mail_from=sender, rcpt_to=["bob@example.net"])
        web.loop.run_until_complete(web.gateway.process(raw, envelope, ingress="smtp"))
    web.hold("virus")
    client, _ = web.login("auditor")
    for period, ticks in (("24h", ":"), ("7d", " "), ("30d", " ")):
        page = client.get("/", params={"period": period}).text
        assert re.search(r'id="messages">3<', page), period
        assert re.search(r'id="spam-count">1<', page) and re.search(r'id="virus-count">1<', page)
        assert 'aria-current="page"' in page
        # Both charts have a y axis with counts and time labels on the x axis.
        chart = page[page.index('id="actions-chart"') : page.index('id="kinds-chart"')]
        assert chart.count("<rect") >= 2 and 'text-anchor="end">0<' in chart
        assert re.search(r'text-anchor="middle">[^<]*' + ticks, chart), period
    assert "a@spam.example" in page.split('id="top-senders"')[1].split("</table>")[0]
    assert "Eicar-Test-Signature" in page.split('id="top-viruses"')[1].split("</table>")[0]
    assert "GTUBE" in page.split('id="top-hits"')[1].split("</table>")[0]
    assert re.search(r'id="spool">0<', page) and re.search(r'id="held">1<', page)

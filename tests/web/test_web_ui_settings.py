"""Settings pages (issue 22): sections fold, an error is shown beside its field with what was
typed kept, sizes and durations read and accepted in human units, no reStructuredText."""

from __future__ import annotations

import re

from tests.web.conftest import Web


def _field(page: str, section: str, name: str) -> str:
    """The HTML of one field's row."""
    start = page.index(f'<label for="{section}.{name}">')
    return page[page.rindex('<div class="field', 0, start) : page.index("</div>\n  </div>", start)]


def test_error_is_shown_beside_its_field_with_the_typed_value(web: Web) -> None:
    client, csrf = web.login("administrator")
    answer = client.post("/settings/events", data={"csrf": csrf, "f.retention_days": "0"})
    assert answer.status_code == 422
    row = _field(answer.text, "events", "retention_days")
    assert 'class="field invalid"' in row and 'aria-invalid="true"' in row
    assert "events.retention_days: Expected float &gt; 0.0" in row
    assert 'value="0"' in row  # what was typed, not the stored value
    # Not at the top of the page, and with no file path or backticks.
    head = answer.text[: answer.text.index('<section class="settings"')]
    assert "retention_days" not in head and "`" not in answer.text.split("<main>")[1]
    # Only the failed section is open.
    assert answer.text.count("<details open>") == 1


def test_sizes_and_durations_in_human_units(web: Web) -> None:
    client, csrf = web.login("administrator")
    page = client.get("/settings", params={"section": "events"}).text
    assert "``" not in page and ":class:" not in page
    assert "<code>json</code>" in page  # the docstring's literals as code
    assert re.search(r'id="events.max_bytes-unit">= 1 GiB<', page)
    assert re.search(r'id="events.retention_days-unit">= 3 d<', page)
    saved = client.post(
        "/settings/events",
        data={"csrf": csrf, "f.max_bytes": "512 MiB", "f.retention_days": "12h"},
    )
    assert saved.status_code == 200, saved.text
    text = web.config_path.read_text()
    assert "max_bytes = 536870912" in text and "retention_days = 0.5" in text
    # A unit a field does not take is refused beside the field.
    wrong = client.post("/settings/events", data={"csrf": csrf, "f.retention_days": "5 MiB"})
    assert wrong.status_code == 422
    assert "Expected float" in _field(wrong.text, "events", "retention_days")

"""The settings pages: a form per section from its config schema (plugins' too), validated on
submit with the key named, secrets and private keys never shown; signature versions."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.web.conftest import Web

BIND_PASSWORD = "s3cret-bind-pw-4711"
HTTP_TOKEN = "tok-9f8e7d6c5b4a"


@pytest.fixture
def secret_web(tmp_path: Path) -> Iterator[Web]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    key_file = tmp_path / "tls.key"
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    extra = (
        "[directory]\n"
        'bind_dn = "cn=svc,dc=example,dc=test"\n'
        f'bind_password = "{BIND_PASSWORD}"\n'
        'base_dn = "dc=example,dc=test"\n'
        f'[tls]\nkey_file = "{key_file}"\ncert_file = ""\n'
        f'[reputation]\nhttp_token = "{HTTP_TOKEN}"\n'
    )
    made = Web(tmp_path / "home", extra_config=extra)
    try:
        yield made
    finally:
        made.close()


def _fields(page: str) -> set[str]:
    return set(re.findall(r'name="f\.([a-z_]+)"', page))


def test_a_form_per_section_from_the_schemas_core_and_plugins(web: Web) -> None:
    officer, _ = web.login("security-officer")
    page = officer.get("/settings")
    assert page.status_code == 200
    for section in (
        "gateway",
        "detectors",
        "events",
        "directory",
        "web",
        "antivirus",
        "antispam",
        "reputation",
        "sandbox",
    ):
        assert f'id="{section}"' in page.text, section
    assert 'id="smtp"' not in page.text  # the mail transport has its own page and permission
    fields = _fields(page.text)
    assert {"retention_days", "bind_dn", "login_bind", "consent", "consent_by"} <= fields
    # Typed inputs: a literal is a choice, a boolean yes/no, a list one item per line.
    choice = re.search(r'<select id="web.login_bind".*?</select>', page.text, re.S)
    assert choice and re.findall(r"<option[^>]*>(\w+)</option>", choice[0]) == [
        "auto",
        "ntlm",
        "simple",
    ]
    assert "<option selected>auto</option>" in choice[0]
    assert re.search(r'<select id="reputation.consent"', page.text)
    mta = officer.get("/mta")
    assert mta.status_code == 200 and 'id="smtp"' in mta.text and 'id="tls"' in mta.text
    # The security officer sees the mail transport but may not save it.
    assert 'id="save-smtp"' not in mta.text and "disabled" in mta.text
    auditor, _ = web.login("auditor")
    view = auditor.get("/settings")
    assert view.status_code == 200 and 'id="save-events"' not in view.text
    operator, _ = web.login("operator")
    assert operator.get("/settings").status_code == 403


def test_a_submitted_section_is_validated_with_the_key_named(web: Web) -> None:
    officer, csrf = web.login("security-officer")
    before = web.config_path.read_text()
    bad = officer.post("/settings/events", data={"csrf": csrf, "f.retention_days": "-1"})
    assert bad.status_code == 422 and "events.retention_days" in bad.text
    typo = officer.post("/settings/events", data={"csrf": csrf, "f.max_bytes": "lots"})
    assert typo.status_code == 422 and "events.max_bytes" in typo.text
    plugin = officer.post(
        "/settings/antivirus", data={"csrf": csrf, "f.engines": "native\nnonsense"}
    )
    assert plugin.status_code == 422 and "antivirus.engines" in plugin.text
    json_field = officer.post("/settings/detectors", data={"csrf": csrf, "f.timeouts": "{oops"})
    assert json_field.status_code == 422 and "detectors.timeouts" in json_field.text
    assert web.config_path.read_text() == before
    no_csrf = officer.post("/settings/events", data={"f.retention_days": "2"})
    assert no_csrf.status_code == 403
    done = officer.post(
        "/settings/events", data={"csrf": csrf, "f.retention_days": "2", "f.enabled": "true"}
    )
    assert done.status_code == 200 and "[events] saved: retention_days" in done.text
    config = tomllib.loads(web.config_path.read_text())
    assert config["events"] == {"retention_days": 2.0}  # only what changed is written
    assert web.config_path.read_text().startswith("# hand-written comment")
    page = officer.get("/settings")
    assert re.search(r'id="events.retention_days" name="f.retention_days" value="2.0"', page.text)
    assert "apply at the next start" in page.text
    # Plugin sections and the mail transport go the same way, the latter with mta.edit.
    assert officer.post("/mta/smtp", data={"csrf": csrf, "f.port": "2526"}).status_code == 403
    admin, admin_csrf = web.login("administrator")
    moved = admin.post("/mta/smtp", data={"csrf": admin_csrf, "f.port": "2526"})
    assert moved.status_code == 200 and "[smtp] saved: port" in moved.text
    assert tomllib.loads(web.config_path.read_text())["smtp"] == {"port": 2526}
    assert admin.post("/settings/smtp", data={"csrf": admin_csrf}).status_code == 404
    acts = [a.action for a in web.gateway.stores.app_log.search(actor="security-officer")]
    assert "settings.edit" in acts


def test_lists_are_one_item_per_line_and_keep_their_item_type(web: Web) -> None:
    officer, csrf = web.login("security-officer")
    done = officer.post(
        "/settings/detectors", data={"csrf": csrf, "f.disabled": "reputation\r\nsandbox\r\n"}
    )
    assert done.status_code == 200, done.text
    assert tomllib.loads(web.config_path.read_text())["detectors"]["disabled"] == [
        "reputation",
        "sandbox",
    ]
    # Digits in a list of strings stay strings.
    codes = officer.post(
        "/settings/reputation", data={"csrf": csrf, "f.dns_suspicious_codes": "2\n127.0.0.3"}
    )
    assert codes.status_code == 200, codes.text
    reputation = tomllib.loads(web.config_path.read_text())["reputation"]
    assert reputation["dns_suspicious_codes"] == ["2", "127.0.0.3"]
    again = officer.post(
        "/settings/reputation", data={"csrf": csrf, "f.dns_suspicious_codes": "2\n127.0.0.3"}
    )
    assert "nothing changed" in again.text


def test_reputation_consent_is_given_in_its_section_with_who_and_when(web: Web) -> None:
    officer, csrf = web.login("security-officer")
    done = officer.post("/settings/reputation", data={"csrf": csrf, "f.consent": "true"})
    assert done.status_code == 200, done.text
    reputation = tomllib.loads(web.config_path.read_text())["reputation"]
    assert reputation["consent"] is True and reputation["consent_by"] == "security-officer"
    assert reputation["consent_at"].endswith("Z")
    withdrawn = officer.post("/settings/reputation", data={"csrf": csrf, "f.consent": "false"})
    assert withdrawn.status_code == 200
    assert tomllib.loads(web.config_path.read_text())["reputation"]["consent"] is False


def test_pages_never_show_passwords_tokens_or_private_keys(secret_web: Web) -> None:
    web = secret_web
    admin, csrf = web.login("administrator")
    key_path = tomllib.loads(web.config_path.read_text())["tls"]["key_file"]
    pages = [admin.get(p) for p in ("/settings", "/mta", "/users", "/inventory", "/")]
    pages.append(admin.get("/api/settings"))
    for page in pages:
        assert page.status_code == 200, page.url
        for secret in (BIND_PASSWORD, HTTP_TOKEN, "PRIVATE KEY", "scrypt$"):
            assert secret not in page.text, (page.url, secret)
    mta = pages[1].text
    assert key_path in mta  # the key is named by its file, never shown
    settings = pages[0].text
    assert re.search(r'type="password" id="directory.bind_password"[^>]*value=""', settings)
    assert "set; leave empty to keep" in settings
    # Saving the section with the secret left empty keeps it; a new one replaces it.
    kept = admin.post(
        "/settings/directory",
        data={"csrf": csrf, "f.bind_password": "", "f.timeout": "5"},
    )
    assert kept.status_code == 200, kept.text
    directory = tomllib.loads(web.config_path.read_text())["directory"]
    assert directory["bind_password"] == BIND_PASSWORD and directory["timeout"] == 5.0
    admin.post("/settings/directory", data={"csrf": csrf, "f.bind_password": "new-pw-123"})
    assert tomllib.loads(web.config_path.read_text())["directory"]["bind_password"] == "new-pw-123"
    assert "new-pw-123" not in admin.get("/settings").text


def test_signature_versions_in_the_api_and_on_the_dashboard(web: Web) -> None:
    auditor, _ = web.login("auditor")
    answer = auditor.get("/api/signatures")
    assert answer.status_code == 200
    (antivirus,) = [s for s in answer.json() if s["plugin"] == "antivirus"]
    assert antivirus["command"] == "mailwarden sigs info --json"
    assert "error" not in antivirus, antivirus
    assert antivirus["version"] == "built-in"  # no update installed yet
    assert antivirus["signatures"] >= 1
    assert any(s.endswith("builtin.ndb") for s in antivirus["sources"])
    assert "signatures loaded" in antivirus["report"]
    page = auditor.get("/")
    assert 'id="signatures"' in page.text and antivirus["report"] in page.text
    nobody = web.client()
    assert nobody.get("/api/signatures").status_code == 401


def test_a_hostile_value_in_a_setting_is_shown_as_text(web: Web) -> None:
    officer, csrf = web.login("security-officer")
    payload = '"><script>alert(1)</script>'
    saved = officer.post("/settings/gateway", data={"csrf": csrf, "f.hostname": payload})
    assert saved.status_code == 200, saved.text
    page = officer.get("/settings").text
    assert "<script>alert(1)" not in page
    assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page

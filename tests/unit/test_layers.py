"""The layers a user can see: the engine works on an install without the web interface."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from mailwarden.web.auth import WebAuth
from tests.conftest import EICAR, make_message
from tests.private_imports import REPO, ROOTS, offences

# Run in a fresh interpreter where `import mailwarden.web` fails, as on an install that
# leaves the web interface out: the config (custom roles included) loads, a bad role is still
# named, a message is scanned and decided, and SMTP AUTH checks the local accounts.
_WITHOUT_WEB = textwrap.dedent(
    """
    import asyncio, sys
    sys.modules["mailwarden.web"] = None

    from mailwarden import ConfigError, Gateway
    from mailwarden.config import parse_config

    home, good, raw = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
    try:
        parse_config('[web]\\nroles = { Reader = ["events.messages.view", "root"] }\\n')
    except ConfigError as exc:
        print("refused:", exc)

    async def main():
        from mailwarden.ingress.smtp import SmtpHandler

        async with Gateway.from_file(good) as gateway:
            decision = await gateway.scan(raw)
            smtp = SmtpHandler(gateway)
            right = smtp.check_password("alice", "correct horse battery")
            wrong = smtp.check_password("alice", "not her password")
        print("verdict:", decision.verdict.antivirus, decision.action.kind)
        print("smtp auth:", right, wrong)

    asyncio.run(main())
    print("web imported:", any(name.startswith("mailwarden.web.") for name in sys.modules))
    """
)


def test_the_engine_loads_its_config_and_scans_without_the_web_package(tmp_path: Path) -> None:
    config = tmp_path / "mailwarden.toml"
    config.write_text(
        f'[gateway]\nhome = "{tmp_path}"\n'
        '[web]\nroles = { Reader = ["events.messages.view"] }\n'
        'groups = { "group:Mail admins" = ["Reader", "Operator"] }\n'
    )
    raw = tmp_path / "eicar.eml"
    raw.write_bytes(make_message(attachment=EICAR))
    # The account as `mailwarden web password` makes it, with the web package installed.
    WebAuth(tmp_path / "web", session_seconds=60, custom_roles={}, login_attempts=5).set_password(
        "alice", "correct horse battery", roles=["Operator"]
    )
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_WEB, str(tmp_path), str(config), str(raw)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused:") and "unknown permissions ['root']" in lines[0]
    assert lines[1] == "verdict: infected reject"
    assert lines[2] == "smtp auth: True False"
    assert lines[3] == "web imported: False"


def test_no_module_imports_another_modules_private_names() -> None:
    # `make lint` runs the same check; here it names the offenders in the test report too.
    assert [str(o) for o in offences([REPO / root for root in ROOTS])] == []


def test_the_private_name_check_finds_each_form_and_spares_a_package_its_own(
    tmp_path: Path,
) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "a.py": "_x = 1\npublic = 2\n",
        "b.py": "from .a import _x\n",
        "c.py": "from . import a\n\nprint(a._x)\n",
        "d.py": "import pkg.a as m\n\nprint(m._x)\n",
        "e.py": "from pkg.sub._impl import y\n",
        "f.py": "from .a import public as _public\nimport os\n\nos._exit(0)\n",
        "sub/__init__.py": "from . import _impl\nfrom ._impl import y\n",
        "sub/_impl.py": "y = 1\n",
    }
    for name, text in sources.items():
        (package / name).write_text(text)
    found = sorted((o.importer, o.module, o.name, o.line) for o in offences([tmp_path]))
    assert found == [
        ("pkg.b", "pkg.a", "_x", 1),
        ("pkg.c", "pkg.a", "_x", 3),
        ("pkg.d", "pkg.a", "_x", 3),
        ("pkg.e", "pkg.sub", "_impl", 1),
    ]
    allowed = frozenset({("pkg.b", "pkg.a", "_x")})
    assert ("pkg.b", "pkg.a", "_x") not in {
        (o.importer, o.module, o.name) for o in offences([tmp_path], allowed)
    }

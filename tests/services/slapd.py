"""A real OpenLDAP slapd on 127.0.0.1 holding a directory shaped like Active Directory.

Shape (see /work/shared/notes/services.md section 2): users with ``mail``,
``proxyAddresses`` (``SMTP:`` primary, ``smtp:`` aliases), ``sAMAccountName``,
``userPrincipalName``; a contact; groups Staff > Sales > alice (nested), Finance, and a
membership cycle Loop1 <-> Loop2. The AD attributes come from a small schema with the real AD
OIDs; ``memberOf`` is kept by the memberof overlay, so data is loaded with ldapadd (slapadd
would bypass the overlay). slapd runs with the ``stats`` log level so tests can read the
filters it received.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import free_port, need
from tests.services import ensure_packages

__all__ = [
    "BASE_DN",
    "SERVICE_DN",
    "SERVICE_PASSWORD",
    "Slapd",
    "directory_section",
    "running_slapd",
]

BASE_DN = "dc=example,dc=test"
ROOT_DN = f"cn=admin,{BASE_DN}"
ROOT_PASSWORD = "secret"
SERVICE_DN = f"cn=svc-gateway,ou=Users,{BASE_DN}"
SERVICE_PASSWORD = "gatewaypw"

_SCHEMA = """\
attributetype ( 1.2.840.113556.1.2.210 NAME 'proxyAddresses'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
attributetype ( 1.2.840.113556.1.4.221 NAME 'sAMAccountName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.656 NAME 'userPrincipalName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.2.840.113556.1.4.146 NAME 'objectSid'
  EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.99999.1.1 NAME 'adUser' AUXILIARY
  MAY ( proxyAddresses $ sAMAccountName $ userPrincipalName $ objectSid ) )
objectclass ( 1.2.840.113556.1.5.15 NAME 'contact' SUP organizationalPerson STRUCTURAL
  MAY ( mail $ proxyAddresses ) )
"""

_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {dir}/ad.schema
pidfile {dir}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload refint
loglevel stats
database mdb
suffix "{base}"
rootdn "{rootdn}"
rootpw {rootpw}
directory {dir}/db
maxsize 16777216
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
memberof-refint TRUE
overlay refint
refint_attributes member memberOf
"""

# objectSid of alice: S-1-5-21-1-2-3-1104 (revision 1, 5 sub-authorities).
ALICE_SID = "S-1-5-21-1-2-3-1104"
_ALICE_SID_B64 = "AQUAAAAAAAUVAAAAAQAAAAIAAAADAAAAUAQAAA=="

_DATA = """\
dn: {base}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=Users,{base}
objectClass: organizationalUnit
ou: Users

dn: ou=Contacts,{base}
objectClass: organizationalUnit
ou: Contacts

dn: ou=Groups,{base}
objectClass: organizationalUnit
ou: Groups

dn: cn=svc-gateway,ou=Users,{base}
objectClass: inetOrgPerson
cn: svc-gateway
sn: gateway
userPassword: {svcpw}

dn: cn=Alice Smith,ou=Users,{base}
objectClass: inetOrgPerson
objectClass: adUser
cn: Alice Smith
sn: Smith
mail: alice@example.test
proxyAddresses: SMTP:alice@example.test
proxyAddresses: smtp:a.smith@example.test
sAMAccountName: alice
userPrincipalName: alice@corp.example.test
objectSid:: {alice_sid}

dn: cn=Bob Jones,ou=Users,{base}
objectClass: inetOrgPerson
objectClass: adUser
cn: Bob Jones
sn: Jones
mail: bob@example.test
proxyAddresses: SMTP:bob@example.test
sAMAccountName: bob
userPrincipalName: bob@corp.example.test

dn: cn=Carol White,ou=Users,{base}
objectClass: inetOrgPerson
objectClass: adUser
cn: Carol White
sn: White
mail: carol@example.test
sAMAccountName: carol

dn: cn=Dan Partner,ou=Contacts,{base}
objectClass: contact
cn: Dan Partner
sn: Partner
mail: dan@partner.test
proxyAddresses: SMTP:dan@partner.test

dn: cn=Sales,ou=Groups,{base}
objectClass: groupOfNames
cn: Sales
member: cn=Alice Smith,ou=Users,{base}

dn: cn=Staff,ou=Groups,{base}
objectClass: groupOfNames
cn: Staff
member: cn=Sales,ou=Groups,{base}
member: cn=Bob Jones,ou=Users,{base}

dn: cn=Finance,ou=Groups,{base}
objectClass: groupOfNames
cn: Finance
member: cn=Carol White,ou=Users,{base}
member: cn=Dan Partner,ou=Contacts,{base}

dn: cn=Loop1,ou=Groups,{base}
objectClass: groupOfNames
cn: Loop1
member: cn=Carol White,ou=Users,{base}

dn: cn=Loop2,ou=Groups,{base}
objectClass: groupOfNames
cn: Loop2
member: cn=Loop1,ou=Groups,{base}

dn: cn=Loop1,ou=Groups,{base}
changetype: modify
add: member
member: cn=Loop2,ou=Groups,{base}
"""


class Slapd:
    """A started slapd: its URL, working directory, and the log of what it received.

    ``tls_url`` (ldaps://) and ``ca_file`` are set when it was started with a certificate;
    StartTLS then works on ``url`` too.
    """

    def __init__(self, directory: Path, port: int, tls_port: int | None = None) -> None:
        self.directory = directory
        self.port = port
        self.url = f"ldap://127.0.0.1:{port}"
        self.tls_url = f"ldaps://127.0.0.1:{tls_port}" if tls_port else None
        self.ca_file = directory / "cert.pem" if tls_port else None
        self.log_path = directory / "slapd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start slapd in the foreground and wait until it answers a bind."""
        socket_path = urllib.parse.quote(str(self.directory / "ldapi"), safe="")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                _binary("slapd"),
                "-f",
                str(self.directory / "slapd.conf"),
                "-h",
                " ".join(u + "/" for u in (self.url, self.tls_url, f"ldapi://{socket_path}") if u),
                "-d",
                "stats",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited: {self.log_path.read_text()[-2000:]}")
            probe = subprocess.run(
                [_binary("ldapwhoami"), "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("slapd did not answer within 15 s")

    def stop(self) -> None:
        """Stop slapd by its PID and wait for it."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def ldapadd(self, ldif: str) -> None:
        """Add (or, with changetype, modify) entries as the root DN, through the overlays."""
        subprocess.run(
            [_binary("ldapmodify"), "-a", "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
            input=ldif.encode(),
            capture_output=True,
            check=True,
        )

    def filters(self) -> list[str]:
        """The search filters slapd received, as it logged them."""
        text = self.log_path.read_text(errors="replace")
        return [
            line.split('filter="', 1)[1].rsplit('"', 1)[0]
            for line in text.splitlines()
            if " SRCH " in line and 'filter="' in line
        ]


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _install() -> None:
    # slapd's postinst would otherwise build a system database of its own for the machine's
    # domain; the tests need only the binaries and modules.
    if shutil.which("debconf-set-selections") and not Path("/usr/sbin/slapd").exists():
        subprocess.run(
            ["debconf-set-selections"],
            input=b"slapd slapd/no_configuration boolean true\n",
            check=False,
        )
    ensure_packages("slapd", "ldap-utils")
    need(Path(_binary("slapd")).exists(), "slapd is not installed")


def _write_certificate(directory: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem) that slapd serves."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@contextmanager
def running_slapd(tls: bool = False) -> Iterator[Slapd]:
    """Run a slapd with the AD-shaped directory above; stopped (by PID) on exit.

    ``tls=True`` also serves a self-signed certificate: ldaps:// on a second port and
    StartTLS on the first.
    """
    _install()
    directory = Path(tempfile.mkdtemp(prefix="mailwarden-slapd-"))
    try:
        (directory / "db").mkdir()
        (directory / "ad.schema").write_text(_SCHEMA)
        conf = _CONF.format(dir=directory, base=BASE_DN, rootdn=ROOT_DN, rootpw=ROOT_PASSWORD)
        if tls:
            _write_certificate(directory)
            conf = (
                f"TLSCertificateFile {directory}/cert.pem\n"
                f"TLSCertificateKeyFile {directory}/key.pem\n" + conf
            )
        (directory / "slapd.conf").write_text(conf)
        check = subprocess.run(
            [_binary("slaptest"), "-u", "-f", str(directory / "slapd.conf")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        slapd = Slapd(directory, free_port(), free_port() if tls else None)
        slapd.start()
        try:
            slapd.ldapadd(
                _DATA.format(base=BASE_DN, svcpw=SERVICE_PASSWORD, alice_sid=_ALICE_SID_B64)
            )
            yield slapd
        finally:
            slapd.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def directory_section(slapd: Slapd, **extra: object) -> str:
    """A ``[directory]`` config section for ``slapd`` with the service account."""
    lines = [
        "[directory]",
        "enabled = true",
        f'url = "{slapd.url}"',
        f'bind_dn = "{SERVICE_DN}"',
        f'bind_password = "{SERVICE_PASSWORD}"',
        f'base_dn = "{BASE_DN}"',
        "timeout = 2.0",
    ]
    for key, value in extra.items():
        # JSON spells strings, numbers and booleans the way TOML does.
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"

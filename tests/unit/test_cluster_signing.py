"""Requests between cluster nodes: signed with the shared secret, refused when anything about
them differs from what was signed, too old, from an unknown node, or replayed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.cluster.signing import NODE, SIGNATURE, TIME, Signer, cluster_secret
from mailwarden.config import parse_config
from mailwarden.errors import ConfigError

SECRET = b"a shared secret of the cluster"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def pair(clock: Clock) -> tuple[Signer, Signer]:
    known = {"a", "b"}
    return Signer(SECRET, "a", known, clock), Signer(SECRET, "b", known, clock)


def test_a_signed_request_is_accepted_and_any_change_to_it_refused() -> None:
    clock = Clock()
    a, b = pair(clock)
    headers = a.headers("GET", "/cluster/v1/events?sender=x%40y.test")
    assert b.check("GET", "/cluster/v1/events?sender=x%40y.test", headers, b"") is None
    assert b.check("GET", "/cluster/v1/events?sender=z%40y.test", headers, b"") == "bad signature"
    assert b.check("POST", "/cluster/v1/events?sender=x%40y.test", headers, b"") is not None
    assert b.check("GET", "/cluster/v1/events?sender=x%40y.test", headers, b"x") is not None
    forged = {**headers, NODE: "b"}
    assert b.check("GET", "/cluster/v1/events?sender=x%40y.test", forged, b"") == "bad signature"
    outsider = Signer(SECRET, "c", {"a", "b", "c"}, clock).headers("GET", "/cluster/v1/events")
    assert b.check("GET", "/cluster/v1/events", outsider, b"") is not None
    other_secret = Signer(b"another secret entirely", "a", {"a", "b"}, clock)
    headers = other_secret.headers("GET", "/cluster/v1/quarantine")
    assert b.check("GET", "/cluster/v1/quarantine", headers, b"") == "bad signature"
    assert b.check("GET", "/cluster/v1/quarantine", {}, b"") is not None


def test_old_and_replayed_change_requests_are_refused() -> None:
    clock = Clock()
    a, b = pair(clock)
    target = "/cluster/v1/quarantine/abc/release"
    headers = a.headers("POST", target)
    assert b.check("POST", target, headers, b"") is None
    assert b.check("POST", target, headers, b"") == "replayed request"
    late = a.headers("POST", target)
    clock.now += 61
    assert "off" in (b.check("POST", target, late, b"") or "")


@given(st.text(max_size=40), st.text(max_size=40), st.binary(max_size=40))
def test_whatever_the_headers_say_only_the_signed_request_passes(
    node: str, when: str, signature: bytes
) -> None:
    clock = Clock()
    _, b = pair(clock)
    headers = {NODE: node, TIME: when, SIGNATURE: signature.hex()}
    assert b.check("POST", "/cluster/v1/quarantine/x/delete", headers, b"") is not None


def test_nodes_without_a_secret_are_a_config_error_naming_the_key() -> None:
    text = '[cluster]\nnodes = [{name = "a", url = "http://10.0.0.1:8080"}]\n'
    with pytest.raises(ConfigError, match="cluster"):
        parse_config(text, {})
    with pytest.raises(ConfigError, match="16 characters"):
        parse_config('[cluster]\nsecret = "short"\n', {})


def test_the_secret_file_must_be_the_owners_alone_and_long_enough(tmp_path: Path) -> None:
    secret = tmp_path / "cluster.secret"
    secret.write_text("a-long-enough-cluster-secret\n")
    secret.chmod(0o644)
    text = f'[gateway]\nhome = "{tmp_path}"\n[cluster]\nsecret_file = "cluster.secret"\n'
    config = parse_config(text, {})
    with pytest.raises(ConfigError, match="chmod 0600") as refused:
        cluster_secret(config)
    assert refused.value.key == "cluster.secret_file"
    secret.chmod(0o600)
    assert cluster_secret(config) == b"a-long-enough-cluster-secret"
    secret.write_text("short\n")
    with pytest.raises(ConfigError, match="16 characters"):
        cluster_secret(config)
    secret.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        cluster_secret(config)

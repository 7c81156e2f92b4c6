"""The ICAP response parser: what servers send is read right, and hostile bytes only ever
raise IcapError (never another exception, never a verdict from an error status)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden_sandbox.icap import IcapError, parse_infection, parse_response

_TOKEN = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=';=,"'),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_icap_error(data: bytes) -> None:
    try:
        response = parse_response(data)
    except IcapError:
        return
    # Whatever parsed has a three-digit status; a verdict is asked only of 200 and 204.
    assert 100 <= response.status <= 999
    try:
        assert response.verdict in ("clean", "malicious")
    except IcapError:
        assert response.status not in (200, 204)


@settings(max_examples=300, deadline=None)
@given(
    threat=_TOKEN,
    istag=_TOKEN,
    http_status=st.sampled_from([200, 403]),
    infection=st.booleans(),
    noise=st.binary(max_size=200),
)
def test_infected_responses_round_trip(
    threat: str, istag: str, http_status: int, infection: bool, noise: bytes
) -> None:
    http = f"HTTP/1.1 {http_status} X\r\nContent-Type: text/html\r\n\r\n".encode()
    headers = [
        "ICAP/1.0 200 OK",
        f'ISTag: "{istag}"',
        f"Encapsulated: res-hdr=0, res-body={len(http)}",
    ]
    if infection:
        headers.append(f"X-Infection-Found: Type=0; Resolution=2; Threat={threat};")
    else:
        headers.append(f"X-Virus-ID: {threat}")
    data = ("\r\n".join(headers) + "\r\n\r\n").encode() + http + noise
    response = parse_response(data)
    assert response.istag == istag
    assert response.http_status == http_status
    if threat.lower() != "no threats":
        assert response.threat == threat
        assert response.verdict == "malicious"


@given(istag=_TOKEN)
def test_204_is_clean_and_errors_are_never_verdicts(istag: str) -> None:
    clean = parse_response(f'ICAP/1.0 204 Unmodified\r\nISTag: "{istag}"\r\n\r\n'.encode())
    assert (clean.verdict, clean.istag) == ("clean", istag)
    failed = parse_response(b"ICAP/1.0 500 Server error\r\nISTag: x\r\n\r\n")
    with pytest.raises(IcapError):
        _ = failed.verdict


def test_known_vendor_headers() -> None:
    assert parse_infection("Type=0; Resolution=2; Threat=EICAR-Test;") == {
        "type": "0",
        "resolution": "2",
        "threat": "EICAR-Test",
    }
    kwts = parse_response(b"ICAP/1.0 200 OK\r\nX-Virus-ID: no threats\r\n\r\n")
    assert kwts.threat is None and kwts.verdict == "clean"
    blocked = parse_response(b"ICAP/1.0 200 OK\r\nX-Response-Info: blocked\r\n\r\n")
    assert blocked.verdict == "malicious"
    folded = parse_response(
        b"ICAP/1.0 200 OK\r\nX-Infection-Found: Type=0; Resolution=2;\r\n Threat=Folded;\r\n\r\n"
    )
    assert folded.threat == "Folded"
    with pytest.raises(IcapError):
        parse_response(b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=500\r\n\r\nshort")
    with pytest.raises(IcapError):
        parse_response(b"HTTP/1.1 200 OK\r\n\r\n")

"""Which headers cross the gateway: hop-by-hop ones (RFC 9110 §7.6.1) never do, nor those a `Connection` names."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import forwarded_headers, relayed_headers

# RFC 9110 §7.6.1 and the proxy-era names, plus the framing headers the host sets for the answer it sends.
HOP_BY_HOP = [
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
    "Content-Length",
]


def backend_answer(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    """Headers as aiohttp hands them over: case-insensitive, a name possibly repeated."""
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize("name", HOP_BY_HOP)
def test_hop_by_hop_answer_headers_are_never_relayed(name):
    relayed = relayed_headers(backend_answer((name, "x"), ("Content-Type", "application/json")))
    assert {k.lower() for k in relayed} == {"content-type"}


def test_the_backends_date_server_cookies_and_request_id_are_not_relayed():
    answer = backend_answer(
        ("Date", "Mon, 30 Nov 2026 08:00:00 GMT"),
        ("Server", "backend/1.0"),
        ("Set-Cookie", "a=b"),
        ("x-request-id", "theirs"),
        ("apim-request-id", "kept"),
        ("x-ratelimit-remaining-tokens", "100"),
    )
    assert relayed_headers(answer) == {"apim-request-id": "kept", "x-ratelimit-remaining-tokens": "100"}


def test_headers_the_backends_connection_header_names_are_dropped_too():
    """RFC 9110 §7.6.1: a proxy removes every header listed in Connection, whatever its name, in any case."""
    answer = backend_answer(
        ("Connection", "keep-alive, X-Backend-Hop"),
        ("connection", " x-Other-Hop ,"),  # a second Connection header, odd spacing, an empty member
        ("X-Backend-Hop", "1"),
        ("X-OTHER-HOP", "2"),
        ("x-ms-region", "weu"),
        ("content-type", "application/json"),
    )
    assert relayed_headers(answer) == {"x-ms-region": "weu", "content-type": "application/json"}


def test_a_plain_mapping_with_a_connection_header_is_read_the_same_way():
    answer = {"Connection": "x-hop", "x-hop": "1", "x-kept": "2"}
    assert relayed_headers(answer) == {"x-kept": "2"}


def test_without_a_connection_header_every_end_to_end_header_is_relayed():
    answer = backend_answer(("x-ms-region", "weu"), ("openai-processing-ms", "12"), ("content-type", "text/plain"))
    assert relayed_headers(answer) == {"x-ms-region": "weu", "openai-processing-ms": "12", "content-type": "text/plain"}


def test_a_header_the_clients_connection_names_is_not_forwarded_even_when_allowed():
    inbound = {"connection": "x-team", "x-team": "a", "x-trace": "t", "content-type": "application/json"}
    forwarded = forwarded_headers(inbound, "rid-1", frozenset({"x-team", "x-trace"}))
    assert forwarded == {
        "x-trace": "t",
        "content-type": "application/json",
        "x-request-id": "rid-1",
        "accept-encoding": "identity",
    }

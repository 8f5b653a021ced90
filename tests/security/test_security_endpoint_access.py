"""The one set of access rules the policy server and the daemon's control endpoint share."""

import pytest

from robot.endpoint_access import (
    EndpointAccessError,
    check_allowed_origins,
    check_bind,
    host_refusal,
    is_loopback,
    origin_refusal,
    token_accepted,
)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]", "LOCALHOST"])
def test_loopback_names(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.0.0.5", "192.168.1.2", "example.org", "127.0.0.1.nip.io"])
def test_not_loopback(host):
    assert not is_loopback(host)


def test_bind_off_loopback_needs_a_real_token():
    check_bind("127.0.0.1", None, "daemon", "set a token")
    check_bind("0.0.0.0", "s3cret", "daemon", "set a token")
    with pytest.raises(EndpointAccessError, match="exposes it to the network"):
        check_bind("0.0.0.0", None, "daemon", "set a token")
    with pytest.raises(EndpointAccessError, match="blank"):
        check_bind("0.0.0.0", " ", "daemon", "set a token")
    with pytest.raises(EndpointAccessError, match="blank"):
        check_bind("127.0.0.1", "\t", "daemon", "set a token")


def test_token_compared_exactly():
    assert token_accepted(None, None)
    assert token_accepted("anything", None)
    assert token_accepted("Bearer s3cret", "s3cret")
    for header in (None, "", "s3cret", "Bearer s3cre", "Bearer s3cret ", "bearer s3cret", "Basic s3cret"):
        assert not token_accepted(header, "s3cret")


def test_origin_rules():
    host = "127.0.0.1:8710"
    assert origin_refusal(None, host) is None  # a program, not a page
    assert origin_refusal("http://127.0.0.1:8710", host) is None  # the endpoint's own origin
    for origin in (
        "http://127.0.0.1:9999",
        "http://localhost:8710",
        "https://evil.example",
        "https://127.0.0.1:8710",
        "null",
    ):
        assert origin_refusal(origin, host), origin
    allowed = check_allowed_origins(["http://localhost:3000/"], "server")
    assert origin_refusal("http://LOCALHOST:3000", host, allowed) is None
    assert origin_refusal("http://localhost:3001", host, allowed)


@pytest.mark.parametrize("origin", ["localhost:3000", "ftp://x", "http://x/path", "*", "http://x:abc", "http://[::1"])
def test_allowed_origins_must_be_origins(origin):
    with pytest.raises(EndpointAccessError, match="not an origin"):
        check_allowed_origins([origin], "server")


def test_host_header_rules_against_dns_rebinding():
    assert host_refusal("127.0.0.1:8710", "127.0.0.1") is None
    assert host_refusal("localhost:8710", "127.0.0.1") is None
    assert host_refusal("[::1]:8710", "::1") is None
    assert host_refusal("10.0.0.5:8710", "10.0.0.5") is None
    assert host_refusal("gpu-box.lab:8710", "10.0.0.5") is None  # off loopback the token guards, any name
    assert host_refusal("attacker.example:8710", "127.0.0.1")
    assert host_refusal(None, "127.0.0.1")
    assert host_refusal("attacker.example", "0.0.0.0") is None  # a wildcard bind is guarded by its token
    assert host_refusal("attacker.example:8710", "127.0.0.2")


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:abc", "http://127.0.0.1:99999", "http://127.0.0.1:-1", "http://[::1", "http://%zz"]
)
def test_a_malformed_origin_is_refused_not_raised(origin):
    assert origin_refusal(origin, "127.0.0.1:8710")


@pytest.mark.parametrize("host", ["[::1", "127.0.0.1:abc", "127.0.0.1:99999", "localhost:-1"])
def test_a_malformed_host_is_refused_not_raised(host):
    assert host_refusal(host, "127.0.0.1")

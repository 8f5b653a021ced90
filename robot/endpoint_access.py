"""Who may use a local endpoint (the policy server, the daemon's control endpoint): one set of rules.

- Loopback by default; any other bind address needs a bearer token (``check_bind``).
- A bearer token, when set, is compared in constant time (``token_accepted``).
- Browsers are kept out unless the page is the endpoint's own: a request that carries an ``Origin``
  header (every browser ``fetch``, form post and websocket handshake does, ``no-cors`` included) is
  refused unless that origin is the endpoint itself or listed in ``allowed_origins``
  (``origin_refusal``). Programs (our clients, openpi's, curl) send no ``Origin`` and are unaffected.
- On a loopback bind the ``Host`` header must be a loopback name, so a DNS name
  rebound to 127.0.0.1 cannot reach it from a page (``host_refusal``).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from data_tools.errors import UserFacingError

LOOPBACK_NAMES = ("localhost",)


class EndpointAccessError(UserFacingError, ValueError):
    """An endpoint setting that would expose it (a non-loopback bind without a token, a bad origin)."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, what: str, token_hint: str) -> None:
    """Refuse a bind address off loopback without a token; ``token_hint`` says how to set one."""
    if token is not None and not token.strip():
        raise EndpointAccessError(f"{what}: the token is blank; {token_hint} with a real secret, or unset it")
    if not is_loopback(host) and not token:
        raise EndpointAccessError(
            f"{what}: binding {host or '0.0.0.0'} exposes it to the network without authentication; "
            f"{token_hint}, or bind 127.0.0.1"
        )


def check_allowed_origins(origins: Iterable[str], what: str) -> list[str]:
    """Normalised ``scheme://host[:port]`` origins; an error naming any that is not one."""
    normalised = []
    for origin in origins:
        key = _origin_key(origin)
        parts = urlsplit(origin) if key is not None else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise EndpointAccessError(
                f"{what}: allowed origin {origin!r} is not an origin; write it as scheme://host[:port]"
            )
        normalised.append(key)
    return normalised


def token_accepted(authorization_header: str | None, token: str | None) -> bool:
    """True when no token is configured, or the header is exactly ``Bearer TOKEN``."""
    if not token:
        return True
    given = (authorization_header or "").encode()
    return hmac.compare_digest(given, f"Bearer {token}".encode())


def origin_refusal(origin: str | None, host_header: str | None, allowed_origins: Iterable[str] = ()) -> str | None:
    """Why a request with this ``Origin`` is refused, or None when it may go on.

    No ``Origin`` (a program, not a page) passes. Otherwise the origin must be the endpoint's own
    (same host and port as the ``Host`` header) or one of ``allowed_origins``.
    """
    if origin is None:
        return None
    if origin == "null":
        return "requests from opaque origins (sandboxed pages, file://) are refused"
    key = _origin_key(origin)
    if key is None:
        return f"the Origin header {origin[:100]!r} is not an origin; requests from web pages are refused"
    if key in set(allowed_origins):
        return None
    if host_header and key == _origin_key(f"http://{host_header}"):  # these endpoints speak plain http
        return None
    return (
        f"requests from the web page at {origin} are refused (cross-origin); "
        "call the endpoint from a program, or list the page's origin in allowed_origins"
    )


def host_refusal(host_header: str | None, bind_host: str) -> str | None:
    """Why a request with this ``Host`` header is refused (DNS rebinding), or None.

    DNS rebinding turns a page's own name into 127.0.0.1, so a loopback bind answers only to loopback
    names. Any other bind needs a token (``check_bind``), which a rebinding page does not have, and is
    reached by whatever names the network gives it (``gpu-box.lab``), so its Host is not checked.
    """
    if not is_loopback(bind_host):
        return None
    if not host_header:
        return "the request has no Host header"
    try:
        parts = urlsplit(f"//{host_header}")
        name, _ = parts.hostname or "", parts.port  # .port raises on a port that is not a number in range
    except ValueError:
        return f"Host {host_header[:100]!r} is not a host[:port]; connect to {bind_host} directly"
    if is_loopback(name):
        return None
    return f"Host {host_header[:100]!r} does not name this endpoint; connect to {bind_host} directly"


def _origin_key(origin: str) -> str | None:
    """``scheme://host[:port]`` with the default port left out, or None for what is not an origin."""
    try:
        parts = urlsplit(origin.strip())
        explicit_port = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError:
        return None
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = explicit_port if explicit_port is not None else default_port
    suffix = "" if port == default_port else f":{port}"
    return f"{parts.scheme}://{host}{suffix}"

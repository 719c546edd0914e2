"""The platform's transport rule, below everything that talks to it (entitlements, telemetry, ledger forwarding):
the bearer token goes only over ``https`` — plain ``http`` only to a loopback host (127.0.0.0/8, ::1, localhost:
tests) — otherwise ``carl.entitlements.insecure`` (docs/remote.md, the token contract)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from engine.errors import CARLError


class EntitlementsError(CARLError):
    code = "carl.entitlements.invalid"
    exit_code = 3
    default_hint = "The platform's entitlement token could not be trusted; retry with `carl --batch entitlements " \
                   "show --refresh`, and contact the platform if it persists."


class Insecure(EntitlementsError):
    code = "carl.entitlements.insecure"
    default_hint = "Use an https:// platform URL in remote.managed (http is allowed for loopback hosts only)."


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (lower-case; default ports dropped)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = {"https": 443, "http": 80}.get(parts.scheme.lower())
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port and port != default else "")


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_secure(url: str) -> None:
    """``carl.entitlements.insecure`` unless ``url`` is https (or http to a loopback host)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https" or (scheme == "http" and is_loopback(parts.hostname)):
        return
    raise Insecure(f"refusing to talk to the platform over {scheme or 'an unknown scheme'}: {origin_of(url)}",
                   context={"platform": origin_of(url)})

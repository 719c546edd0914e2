"""The managed platform's client side: entitlements, consent, telemetry and ledger forwarding (docs/remote.md).

The managed backend (``remote.managed`` in carl.yaml, :mod:`engine.remote.managed`) submits jobs to ``url``.
The platform behind it answers four more things, all under ``platform_url`` (default: the scheme and host of
``url``), each path configurable under ``remote.managed``:

    GET  /api/platform/entitlements        bearer token → {"ok": true, "token": "<JWS, EdDSA>", "expires_in", "tier"}
    GET  /.well-known/carl-camp-jwks.json  → {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid", "x"}]}
    POST /api/platform/telemetry           one run event, Idempotency-Key header (only with telemetry consent)
    POST /api/platform/ledger/append       signed ledger blocks (only with ledger_forward consent)

Modules: :mod:`.entitlements` (verify, pin, cache, grace), :mod:`.consent` (local flags, all off by default),
:mod:`.telemetry` (background forwarder that never blocks training), :mod:`.forward` (ledger blocks, replay).
Everything is stored under ``CARL_HOME/platform/`` (files 0600, written atomically). pynacl and httpx are
imported only where used.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from engine.errors import ConfigError


def platform_base(settings) -> str:
    """The platform's base URL: ``remote.managed.platform_url``, else the scheme and host of ``url``."""
    raw = getattr(settings, "platform_url", None) or getattr(settings, "url", None)
    if not raw:
        raise ConfigError("remote.managed.url is not set: carl does not know the platform",
                          hint="Add remote: {managed: {url: https://…}} (or platform_url) to carl.yaml.",
                          context={"field": "remote.managed.url"})
    if getattr(settings, "platform_url", None):
        return raw.rstrip("/")
    parts = urlsplit(raw)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else raw.rstrip("/")


def join(base: str, path: str) -> str:
    return base.rstrip("/") + "/" + path.lstrip("/")

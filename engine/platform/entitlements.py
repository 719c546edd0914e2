"""Entitlements: a signed Ed25519 JWT from the platform, verified against its JWKS, cached with an offline grace.

Fetch (``refresh``): ``GET {platform}/.well-known/carl-camp-jwks.json`` (no credential), then
``GET {platform}/api/platform/entitlements`` with ``Authorization: Bearer $CARL_MANAGED_TOKEN``; the body is
``{"ok": true, "token": "<JWS>", "expires_in", "tier", …}``. The token is JWS compact serialization
(``base64url(header).base64url(payload).base64url(signature)``) with ``alg: EdDSA`` and a ``kid``; the signature is
Ed25519 over the ASCII bytes ``base64url(header) + "." + base64url(payload)``, checked here with pynacl.

Transport: the platform URL must be ``https`` (``http`` only for a loopback host: 127.0.0.0/8, ::1, localhost —
tests); redirects are not followed, so the credential never goes anywhere but the configured origin. Otherwise
``carl.entitlements.insecure``.

Key pinning (``CARL_HOME/platform/jwks-pins.json``): the first JWKS seen for a platform is pinned (kid → x, trust on
first use). Later, a kid that is not pinned is **never trusted on the JWKS's word alone**: it is pinned only when the
JWKS carries a rotation statement for it (``"carl_rotations": [JWS…]``, each an EdDSA JWS signed by a *pinned* key
with claims ``{"typ": "carl-key-rotation", "iss": <origin>, "kid": <new kid>, "x": <new key>}``), or when the user
runs ``carl --batch entitlements repin`` (which shows the pinned and the offered keys' fingerprints). A pinned kid
whose key changed, a JWKS in which no pinned or vouched kid is left, and a token signed by an offered but unvouched
kid are ``carl.entitlements.key_changed``.

Claims (the token contract, docs/remote.md): ``exp`` and ``iat`` are required numbers; ``exp``, ``nbf`` and ``iat``
are checked with :data:`SKEW_S` (5 minutes) of clock skew; ``iss`` must equal the platform URL's origin
(``scheme://host[:port]``) and ``aud`` (a string or a list) must contain ``carl``; otherwise
``carl.entitlements.claims``. ``grants`` (a list of names), ``tier`` and ``sub`` are shown. The verified token is cached in
``CARL_HOME/platform/entitlements.json`` (0600, atomic); on every read its signature is checked again with the
pinned key, and a file that fails (unparseable, edited, unknown key) is quarantined and reported ``corrupt``.

Status (:func:`status_of`), from the cache and the clock alone:

- ``fresh``     fetched less than :data:`TTL_S` (15 min) ago and the token's ``exp`` not passed;
- ``stale``     older than that, no failed refresh since: the next admission refreshes first;
- ``offline_grace``          a refresh failed (network) and the last good fetch is < :data:`GRACE_S` (24 h) old;
- ``offline_grace_expired``  the last good fetch is ≥ 24 h old: cached grants no longer admit anything;
- ``missing``   nothing cached (for this platform); ``corrupt`` the cache was quarantined just now.

Only ``fresh`` and ``offline_grace`` admit (:meth:`Entitlements.require`).
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from engine.errors import CARLError, NetworkError, PermissionDenied
from engine.home import CarlHome
from engine.platform import join, platform_base
from engine.platform.store import Corrupt, platform_dir, quarantine, read_json, write_json
from engine.platform.transport import EntitlementsError, Insecure, is_loopback, origin_of, require_secure  # noqa: F401

TTL_S = 15 * 60.0
GRACE_S = 24 * 3600.0
SKEW_S = 5 * 60.0
CACHE_FILE = "entitlements.json"
PINS_FILE = "jwks-pins.json"
FORMAT = "carl-entitlements/1"
AUDIENCE = "carl"
ROTATION_TYP = "carl-key-rotation"
STATUSES = ("fresh", "stale", "offline_grace", "offline_grace_expired", "missing", "corrupt")
ADMITTING = ("fresh", "offline_grace")


class SignatureInvalid(EntitlementsError):
    code = "carl.entitlements.signature_invalid"


class KeyChanged(EntitlementsError):
    code = "carl.entitlements.key_changed"
    default_hint = "The platform's signing key changed without a rotation signed by a pinned key. If you trust the " \
                   "new key, run `carl --batch entitlements repin` (it shows both keys' fingerprints: compare them " \
                   "with what the platform publishes elsewhere) and refresh."


class ClaimsInvalid(EntitlementsError):
    code = "carl.entitlements.claims"
    default_hint = "The platform's token does not meet carl's token contract (exp, iat, iss = the platform's " \
                   "origin, aud containing carl; docs/remote.md). Check remote.managed.url, or contact the platform."


class TokenExpired(EntitlementsError):
    code = "carl.entitlements.expired"
    default_hint = "The token's exp/nbf is outside the 5-minute clock skew: check this machine's clock, then refresh."


class BadResponse(EntitlementsError):
    code = "carl.entitlements.bad_response"
    exit_code = 1
    default_hint = "The platform answered something that is not an entitlements response; check remote.managed's " \
                   "platform_url and paths."


class Unavailable(CARLError):
    code = "carl.entitlements.unavailable"
    exit_code = 4
    default_hint = "carl has no entitlements cached and cannot reach the platform; check the network and " \
                   "remote.managed.url, then `carl --batch entitlements show --refresh`."


class GraceExpired(CARLError):
    code = "carl.entitlements.offline_grace_expired"
    exit_code = 5
    default_hint = "The platform has been unreachable for more than 24 h since the last good fetch; reconnect and " \
                   "run `carl --batch entitlements show --refresh`."


# ----------------------------------------------------------------------------------------------- JWS / JWKS
def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or any(c in text for c in "=+/ \n"):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class Jws:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def kid(self) -> str | None:
        k = self.header.get("kid")
        return k if isinstance(k, str) else None


def parse_jws(token: str) -> Jws:
    """Split and decode a compact JWS; ``carl.entitlements.bad_response`` when it is not one."""
    try:
        h64, p64, s64 = str(token).split(".")
        header, claims = json.loads(b64url_decode(h64)), json.loads(b64url_decode(p64))
        sig = b64url_decode(s64)
    except (ValueError, UnicodeDecodeError):
        raise BadResponse("the entitlement token is not a compact JWS (header.payload.signature)") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise BadResponse("the entitlement token's header and payload must be JSON objects")
    return Jws(header, claims, f"{h64}.{p64}".encode("ascii"), sig)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    from nacl import bindings  # lazy: `carl --help` never pays for it

    if len(public) != 32 or len(signature) != 64:
        return False
    try:
        bindings.crypto_sign_open(signature + message, public)
        return True
    except Exception:  # nacl.exceptions.BadSignatureError, or a malformed key
        return False


def fingerprint(x: str) -> str:
    """A key's fingerprint as ``entitlements repin`` shows it: ``SHA256:`` + base64 of the raw key's sha256."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(b64url_decode(x)).digest()).decode("ascii").rstrip("=")


def parse_jwks(data: Any) -> dict[str, str]:
    """``{kid: x}`` for every OKP/Ed25519 key of a JWKS (x: base64url of 32 bytes)."""
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        raise BadResponse("the JWKS has no keys list")
    out: dict[str, str] = {}
    for k in keys:
        if not isinstance(k, dict) or k.get("kty") != "OKP" or k.get("crv") != "Ed25519":
            continue
        kid, x = k.get("kid"), k.get("x")
        try:
            ok = isinstance(kid, str) and bool(kid) and isinstance(x, str) and len(b64url_decode(x)) == 32
        except ValueError:
            ok = False
        if ok:
            out[kid] = x
    if not out:
        raise BadResponse("the JWKS holds no usable OKP/Ed25519 key with a kid")
    return out


def rotations_of(data: Any) -> list[str]:
    raw = data.get("carl_rotations") if isinstance(data, dict) else None
    return [r for r in raw if isinstance(r, str)] if isinstance(raw, list) else []


def vouched_keys(pinned: dict[str, str], rotations: list[str], issuer: str | None) -> dict[str, str]:
    """``{kid: x}`` that a rotation statement signed by a pinned key vouches for (bad statements are ignored)."""
    out: dict[str, str] = {}
    for statement in rotations:
        try:
            jws = parse_jws(statement)
        except CARLError:
            continue
        kid = jws.kid
        if jws.header.get("alg") != "EdDSA" or kid not in pinned:
            continue
        if not ed25519_verify(b64url_decode(pinned[kid]), jws.signing_input, jws.signature):
            continue
        c = jws.claims
        if c.get("typ") != ROTATION_TYP or (issuer is not None and c.get("iss") != issuer):
            continue
        if isinstance(c.get("kid"), str) and isinstance(c.get("x"), str):
            out[c["kid"]] = c["x"]
    return out


def check_pins(pinned: dict[str, str], jwks: dict[str, str], rotations: list[str] | None = None,
               issuer: str | None = None) -> dict[str, str]:
    """The pins after seeing ``jwks``: first use pins everything; a changed key, or no pinned or vouched kid
    left, raises ``carl.entitlements.key_changed``; a new kid is pinned only when a rotation statement signed by
    a pinned key vouches for exactly that key (never on the JWKS's word alone)."""
    if not pinned:
        return dict(jwks)
    changed = sorted(k for k in pinned if k in jwks and jwks[k] != pinned[k])
    if changed:
        raise KeyChanged(f"the platform's key {changed[0]!r} changed while keeping its kid",
                         context={"kids": changed})
    vouched = vouched_keys(pinned, rotations or [], issuer)
    new = {k: x for k, x in jwks.items() if k not in pinned and vouched.get(k) == x}
    if not any(k in jwks for k in pinned) and not new:
        raise KeyChanged("the platform's signing keys were swapped: none of the pinned key ids is in its JWKS, "
                         "and no rotation signed by a pinned key vouches for the new ones",
                         context={"pinned": sorted(pinned), "offered": sorted(jwks)})
    return {**pinned, **new}


def check_claims(claims: dict[str, Any], issuer: str | None) -> None:
    """The token contract's required claims (see the module docstring); ``carl.entitlements.claims``."""
    for name in ("exp", "iat"):
        v = claims.get(name)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ClaimsInvalid(f"the entitlement token has no {name} claim (a number of seconds)",
                                context={"claim": name})
    if issuer is not None and claims.get("iss") != issuer:
        raise ClaimsInvalid(f"the entitlement token's issuer {claims.get('iss')!r} is not the platform {issuer!r}",
                            context={"claim": "iss", "expected": issuer})
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if AUDIENCE not in auds:
        raise ClaimsInvalid(f"the entitlement token's audience {aud!r} does not include {AUDIENCE!r}",
                            context={"claim": "aud"})


def verify_token(token: str, keys: dict[str, str], now: float, skew: float = SKEW_S,
                 check_time: bool = True, issuer: str | None = None) -> Jws:
    """Verify the signature of ``token`` with ``keys`` (kid → x), the required claims (``issuer``: the expected
    ``iss``) and, with ``check_time``, its exp/nbf/iat."""
    jws = parse_jws(token)
    if jws.header.get("alg") != "EdDSA":
        raise SignatureInvalid(f"the entitlement token's alg is {jws.header.get('alg')!r}, not EdDSA")
    kid = jws.kid
    if kid is None or kid not in keys:
        raise SignatureInvalid(f"the entitlement token is signed by key {kid!r}, which is not a pinned platform key",
                               context={"kid": kid, "pinned": sorted(keys)})
    if not ed25519_verify(b64url_decode(keys[kid]), jws.signing_input, jws.signature):
        raise SignatureInvalid("the entitlement token's signature does not verify with the platform's key",
                               context={"kid": kid})
    check_claims(jws.claims, issuer)
    if check_time:
        exp, nbf, iat = jws.claims.get("exp"), jws.claims.get("nbf"), jws.claims.get("iat")
        if isinstance(iat, (int, float)) and now < iat - skew:
            raise TokenExpired(f"the entitlement token was issued in the future ({iso(iat)}; now {iso(now)})",
                               context={"iat": iat, "now": now, "skew_s": skew})
        if isinstance(exp, (int, float)) and now > exp + skew:
            raise TokenExpired(f"the entitlement token expired at {iso(exp)} (now {iso(now)})",
                               context={"exp": exp, "now": now, "skew_s": skew})
        if isinstance(nbf, (int, float)) and now < nbf - skew:
            raise TokenExpired(f"the entitlement token is not valid before {iso(nbf)} (now {iso(now)})",
                               context={"nbf": nbf, "now": now, "skew_s": skew})
    return jws


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(float(t), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def grants_of(claims: dict[str, Any]) -> list[str]:
    raw = claims.get("grants")
    if not isinstance(raw, list):
        return []
    out = []
    for g in raw:
        name = g.get("name") if isinstance(g, dict) else g
        if isinstance(name, str) and name:
            out.append(name)
    return out


def grant_matches(grants: list[str], need: str, scope: str | None = None) -> bool:
    """``need`` is held when a grant is exactly ``need`` (any scope) or ``need:scope`` (``jobs.submit:gpu-1x``)."""
    return need in grants or (scope is not None and f"{need}:{scope}" in grants)


# ----------------------------------------------------------------------------------------------- status
def fetched_at_of(cache: dict[str, Any], claims: dict[str, Any] | None) -> float:
    """When the cached token was fetched — never later than its signed ``iat`` (+ skew), so editing the
    cache's unsigned ``fetched_at`` cannot stretch the TTL or the offline grace."""
    fetched = float(cache.get("fetched_at") or 0)
    iat = (claims or {}).get("iat")
    return min(fetched, float(iat) + SKEW_S) if isinstance(iat, (int, float)) else fetched


def status_of(cache: dict[str, Any] | None, claims: dict[str, Any] | None, now: float) -> str:
    if cache is None:
        return "missing"
    fetched = fetched_at_of(cache, claims)
    age = max(0.0, now - fetched)
    offline = cache.get("offline_since")
    exp = (claims or {}).get("exp")
    expired = isinstance(exp, (int, float)) and now > exp + SKEW_S
    if age >= GRACE_S:
        return "offline_grace_expired"
    if isinstance(offline, (int, float)) and offline >= fetched:
        return "offline_grace"
    if age < TTL_S and not expired:
        return "fresh"
    return "stale"


@dataclass
class State:
    status: str
    platform: str
    cache: dict[str, Any] | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    now: float = 0.0
    quarantined: str | None = None
    refresh: dict[str, Any] | None = None  # {"ok": bool, "error"?: {...}} when a refresh was tried

    @property
    def grants(self) -> list[str]:
        return grants_of(self.claims)

    @property
    def admits(self) -> bool:
        return self.status in ADMITTING


class Entitlements:
    """The entitlements of one platform (``remote.managed``), cached under ``CARL_HOME/platform/``.

    ``clock`` is injectable (tests move time); ``policy``/``sleep`` are the remote retry policy and its sleep."""

    def __init__(self, settings: Any, *, home: CarlHome | None = None, clock: Callable[[], float] = time.time,
                 policy: Any = None, sleep: Callable[[float], None] = time.sleep):
        from engine.remote.base import RetryPolicy

        self.settings = settings
        self.base = platform_base(settings)
        self.issuer = origin_of(self.base)
        self.home = home or CarlHome.from_env()
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.dir = platform_dir(self.home)

    # -- where things go
    @property
    def entitlements_url(self) -> str:
        return join(self.base, self.settings.entitlements_path)

    @property
    def jwks_url(self) -> str:
        return join(self.base, self.settings.jwks_path)

    @property
    def cache_path(self) -> Path:
        return self.dir / CACHE_FILE

    @property
    def pins_path(self) -> Path:
        return self.dir / PINS_FILE

    # -- local state
    def pins(self) -> dict[str, str]:
        try:
            data = read_json(self.pins_path, now=self.clock()) or {}
        except Corrupt:
            return {}
        got = data.get(self.base)
        return {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {}

    def _save_pins(self, pins: dict[str, str]) -> None:
        try:
            data = read_json(self.pins_path) or {}
        except Corrupt:
            data = {}
        data[self.base] = pins
        write_json(self.pins_path, data)

    def cached(self) -> State:
        """The state from the cache and the clock; no network. A cache that fails verification is quarantined."""
        now = self.clock()
        try:
            cache = read_json(self.cache_path, now=now)
        except Corrupt as exc:
            return State("corrupt", self.base, now=now, quarantined=str(exc.quarantined) if exc.quarantined else None)
        if cache is None or cache.get("platform") != self.base:
            return State("missing", self.base, now=now)
        try:
            if cache.get("format") != FORMAT or not isinstance(cache.get("fetched_at"), (int, float)):
                raise BadResponse("not carl's entitlements cache")
            jws = verify_token(cache.get("token", ""), self.pins(), now, check_time=False, issuer=self.issuer)
        except CARLError:
            q = quarantine(self.cache_path, now)
            return State("corrupt", self.base, now=now, quarantined=str(q) if q else None)
        return State(status_of(cache, jws.claims, now), self.base, cache, jws.claims, now)

    # -- network
    def _get(self, url: str, what: str, auth: bool) -> Any:
        import httpx

        from engine.remote.base import http_json, require_token

        headers = {"Accept": "application/json", "User-Agent": "carl"}
        if auth:
            headers["Authorization"] = f"Bearer {require_token(self.settings.token_env, 'managed')}"
        from engine.errors import RunNotFound
        from engine.remote.base import RemoteBadResponse

        require_secure(url)
        with httpx.Client(follow_redirects=False) as client:
            try:
                return http_json(client, "GET", url, policy=self.policy, backend="managed", what=what,
                                 headers=headers, sleep=self.sleep)
            except (RunNotFound, RemoteBadResponse) as exc:  # 404 / other 4xx / not JSON: not a platform answer
                raise BadResponse(f"{what}: {url} did not answer as the platform should ({exc.message})",
                                  context={"url": url}) from None

    def refresh(self) -> State:
        """Fetch, verify, pin and cache. Verification failures raise ``carl.entitlements.*``; a network failure
        (retries exhausted) marks the cache offline and returns the resulting state with ``refresh.error``."""
        from engine.remote.base import require_token

        require_secure(self.base)
        require_token(self.settings.token_env, "managed")  # carl.credential before anything is sent
        before = self.cached()
        try:
            jwks_doc = self._get(self.jwks_url, "entitlements jwks", auth=False)
            jwks = parse_jwks(jwks_doc)
            body = self._get(self.entitlements_url, "entitlements", auth=True)
        except NetworkError as exc:
            return self._offline(before, exc)
        if not isinstance(body, dict) or body.get("ok") is not True or not isinstance(body.get("token"), str):
            raise BadResponse("the entitlements response is not {\"ok\": true, \"token\": …}",
                              context={"url": self.entitlements_url})
        now = self.clock()
        pins = check_pins(self.pins(), jwks, rotations_of(jwks_doc), self.issuer)
        usable = {k: v for k, v in pins.items() if k in jwks}
        kid = parse_jws(body["token"]).kid
        if kid in jwks and kid not in usable:
            raise KeyChanged(f"the entitlement token is signed by key {kid!r}, which the platform's JWKS offers but "
                             "no pinned key vouches for", context={"kid": kid, "pinned": sorted(pins),
                                                                 "fingerprint": fingerprint(jwks[kid])})
        jws = verify_token(body["token"], usable, now, issuer=self.issuer)
        self._save_pins(pins)
        cache = {"format": FORMAT, "platform": self.base, "token": body["token"], "kid": jws.kid,
                 "fetched_at": now, "offline_since": None, "expires_in": body.get("expires_in"),
                 "tier": body.get("tier")}
        write_json(self.cache_path, cache)
        return State(status_of(cache, jws.claims, now), self.base, cache, jws.claims, now, refresh={"ok": True})

    def repin(self) -> dict[str, Any]:
        """Trust the platform's current JWKS on purpose: replace this platform's pins with it, then refresh.
        Returns both sides' fingerprints (``before``: what was pinned; ``after``: what is pinned now)."""
        require_secure(self.base)
        before = self.pins()
        jwks = parse_jwks(self._get(self.jwks_url, "entitlements jwks", auth=False))
        self._save_pins(dict(jwks))
        out: dict[str, Any] = {
            "platform": self.base,
            "before": [{"kid": k, "fingerprint": fingerprint(x)} for k, x in sorted(before.items())],
            "after": [{"kid": k, "fingerprint": fingerprint(x)} for k, x in sorted(jwks.items())],
            "changed": before != jwks,
        }
        try:
            st = self.refresh()
            out["status"] = st.status
        except CARLError as exc:
            if exc.code.startswith("carl.entitlements."):
                raise
            out["status"] = self.cached().status
            out["refresh"] = {"ok": False, "error": exc.to_dict()["error"]}
        return out

    def _offline(self, before: State, exc: CARLError) -> State:
        err = exc.to_dict()["error"]
        if before.cache is None:
            return State("missing", self.base, now=before.now, quarantined=before.quarantined,
                         refresh={"ok": False, "error": err})
        cache = dict(before.cache)
        if not isinstance(cache.get("offline_since"), (int, float)) or cache["offline_since"] < cache["fetched_at"]:
            cache["offline_since"] = before.now
        write_json(self.cache_path, cache)
        return State(status_of(cache, before.claims, before.now), self.base, cache, before.claims, before.now,
                     refresh={"ok": False, "error": err})

    def resolve(self) -> State:
        """What an admission uses: a fresh cache as is; otherwise a refresh (offline → the grace rules)."""
        st = self.cached()
        if st.status == "fresh":
            return st
        return self.refresh()

    def require(self, grant: str, scope: str | None = None) -> State:
        """Admit an action needing ``grant`` (``jobs.submit``, scoped by flavor), or raise:
        ``carl.entitlements.unavailable`` (nothing cached, platform unreachable), ``…offline_grace_expired``,
        ``carl.permission`` (exit 5) naming the grant."""
        st = self.resolve()
        if st.status == "fresh" and st.refresh is None and not grant_matches(st.grants, grant, scope):
            st = self.refresh()  # a grant added since the cached fetch counts at once
        if st.status == "missing":
            err = (st.refresh or {}).get("error") or {}
            raise Unavailable(f"no entitlements for {self.base}: {err.get('message', 'the platform is unreachable')}",
                              context={"platform": self.base})
        if st.status == "offline_grace_expired":
            raise GraceExpired(f"the platform {self.base} is unreachable and the cached entitlements are older than "
                               "24 h", context={"platform": self.base,
                                               "fetched_at": iso((st.cache or {}).get("fetched_at"))})
        if not st.admits:  # stale after a successful refresh cannot happen; be strict anyway
            raise Unavailable(f"entitlements for {self.base} are {st.status}", context={"status": st.status})
        if not grant_matches(st.grants, grant, scope):
            need = f"{grant}:{scope}" if scope else grant
            raise PermissionDenied(f"the platform does not grant {need} to this account (tier "
                                   f"{st.claims.get('tier') or (st.cache or {}).get('tier') or 'unknown'})",
                                   hint=f"This needs the grant {need!r} (or {grant!r}); ask the platform for it, then "
                                        "`carl --batch entitlements show --refresh`.",
                                   context={"grant": need, "grants": st.grants, "status": st.status})
        return st

    # -- the JSON `entitlements show` prints
    def view(self, st: State) -> dict[str, Any]:
        cache = st.cache or {}
        fetched = fetched_at_of(cache, st.claims) if cache else None
        token_env = self.settings.token_env
        out: dict[str, Any] = {
            "status": st.status, "admits": st.admits, "platform": self.base,
            "fetched_at": iso(fetched), "age_s": round(max(0.0, st.now - fetched), 1) if fetched else None,
            "key_id": cache.get("kid"), "tier": st.claims.get("tier") or cache.get("tier"),
            "subject": st.claims.get("sub"), "grants": st.grants, "expires_at": iso(st.claims.get("exp")),
            "offline_since": iso(cache.get("offline_since")),
            "pinned_key_ids": sorted(self.pins()), "cache": str(self.cache_path),
            "ttl_s": TTL_S, "offline_grace_s": GRACE_S, "clock_skew_s": SKEW_S,
            "token_env": token_env, "token_present": bool(os.environ.get(token_env)),
            # what a refresh sends, and to whom (nothing else is sent for entitlements)
            "requests": [{"method": "GET", "url": self.jwks_url, "headers": {}},
                         {"method": "GET", "url": self.entitlements_url,
                          "headers": {"Authorization": f"Bearer ${token_env}"}}],
        }
        if st.quarantined:
            out["quarantined"] = st.quarantined
        if st.refresh is not None:
            out["refresh"] = st.refresh
        return out


def for_config(cfg: Any, **kw: Any) -> Entitlements:
    """The platform of carl.yaml's ``remote.managed`` (``carl.config`` when it has no url)."""
    from engine.remote.base import RetryPolicy
    from engine.remote.config import remote_settings

    rs = remote_settings(cfg)
    kw.setdefault("policy", RetryPolicy.from_settings(rs.retries))
    return Entitlements(rs.managed, **kw)



def doctor_row(path: Any = None, sets: list[str] | None = None) -> tuple[str, str]:
    """(status, detail) for `carl doctor`'s ``entitlements`` row, from the cache alone (no network)."""
    from engine.config import load_config

    try:
        cfg, _ = load_config(path, sets)
        ent = for_config(cfg)
    except CARLError as exc:
        if exc.context.get("field") == "remote.managed.url":
            return "ok", "no managed platform configured (remote.managed.url): nothing is fetched or sent"
        return "warn", f"unknown: {exc.message}"
    try:
        st = ent.cached()
        v = ent.view(st)
    except CARLError as exc:
        return "warn", f"unknown: {exc.message}"
    if st.status == "missing":
        return "warn", f"none cached for {ent.base}: run `carl --batch entitlements show --refresh`"
    if st.status == "corrupt":
        return "warn", f"the cache was corrupt and is quarantined ({st.quarantined}): refresh to fetch again"
    grants = ", ".join(v["grants"]) or "no grants"
    detail = f"{st.status} ({v['age_s']:.0f} s old) · key {v['key_id']} · tier {v['tier'] or '?'} · {grants}"
    return ("ok" if st.status == "fresh" else "warn"), detail


def summary(settings: Any, home: CarlHome | None = None, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """For panels: ``{"status", "admits", "grants", "key_id", "age_s"}`` from the cache alone (no network)."""
    ent = Entitlements(settings, home=home, clock=clock)
    v = ent.view(ent.cached())
    return {k: v[k] for k in ("status", "admits", "grants", "key_id", "age_s")}

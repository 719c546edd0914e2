"""The managed platform's side of entitlements, telemetry and ledger forwarding, mixed into the loopback
``ManagedFake`` (tests/test_remote_fakes.py): a real Ed25519 key signs the entitlement JWS (EdDSA), the JWKS is
served without a credential, telemetry events and ledger blocks are kept for the tests to inspect.

    GET  /.well-known/carl-camp-jwks.json    {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid", "x"}],
                                              "carl_rotations"?: [JWS…]}  (public)
    GET  /api/platform/entitlements          {"ok": true, "token", "expires_in", "tier"}
    POST /api/platform/telemetry             dedupes on Idempotency-Key
    POST /api/platform/ledger/append         appends blocks that extend its chain; duplicate / gap / conflict
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Callable

from engine.ledger.keys import Signer, signer_from_seed

JWKS_PATH = "/.well-known/carl-camp-jwks.json"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jws(claims: dict[str, Any], signer: Signer, kid: str, alg: str = "EdDSA") -> str:
    h = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    p = b64(json.dumps(claims).encode())
    return f"{h}.{p}.{b64(signer.sign(f'{h}.{p}'.encode('ascii')))}"


class PlatformMixin:
    public_paths = (JWKS_PATH,)

    def platform_init(self) -> None:
        self.keys: dict[str, Signer] = {"carl-camp-1": signer_from_seed("platform-key-1")}
        self.published: list[str] = ["carl-camp-1"]  # kids in the JWKS
        self.signing_kid = "carl-camp-1"
        self.grants: list[str] = ["jobs.submit"]
        self.tier = "pro"
        self.expires_in = 900
        self.clock: Callable[[], float] = time.time  # the platform's clock (iat/nbf/exp)
        self.claims_extra: dict[str, Any] = {}
        self.rotations: list[str] = []  # rotation statements signed by an old key, served in the JWKS
        self.tamper = False  # flip a payload byte after signing
        self.telemetry: list[dict[str, Any]] = []
        self.telemetry_keys: set[str] = set()
        self.chain: list[dict[str, Any]] = []
        self.ledger_acks = 0
        self.ledger_down = False  # 503 on every append

    def add_key(self, kid: str, seed: str) -> None:
        self.keys[kid] = signer_from_seed(seed)

    def vouch(self, new_kid: str, by_kid: str) -> None:
        """Publish a rotation statement for ``new_kid``'s key, signed by ``by_kid`` (docs/remote.md)."""
        claims = {"typ": "carl-key-rotation", "iss": self.url, "kid": new_kid,
                  "x": b64(self.keys[new_kid].public_bytes), "iat": int(self.clock())}
        self.rotations.append(jws(claims, self.keys[by_kid], by_kid))

    def jwks(self) -> dict[str, Any]:
        out: dict[str, Any] = {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": k, "x": b64(self.keys[k].public_bytes),
                                         "use": "sig"} for k in self.published]}
        if self.rotations:
            out["carl_rotations"] = list(self.rotations)
        return out

    def entitlement_token(self) -> str:
        now = self.clock()
        claims = {"sub": "user-42", "iss": self.url, "aud": ["carl"], "iat": int(now), "nbf": int(now), "exp": int(now) +
                  self.expires_in, "tier": self.tier, "grants": list(self.grants), **self.claims_extra}
        claims = {k: v for k, v in claims.items() if v is not None}  # claims_extra {"exp": None} drops exp
        t = jws(claims, self.keys[self.signing_kid], self.signing_kid)
        if self.tamper:
            h, p, s = t.split(".")
            claims["grants"] = claims["grants"] + ["everything"]
            t = f"{h}.{b64(json.dumps(claims).encode())}.{s}"
        return t

    def platform_route(self, req: Any) -> tuple[int, Any, dict[str, str]]:
        if req.path == JWKS_PATH and req.method == "GET":
            return 200, self.jwks(), {}
        if req.path == "/api/platform/entitlements" and req.method == "GET":
            return 200, {"ok": True, "token": self.entitlement_token(), "expires_in": self.expires_in,
                         "tier": self.tier}, {}
        if req.path == "/api/platform/telemetry" and req.method == "POST":
            key = req.headers.get("idempotency-key")
            if not key:
                return 400, {"error": "Idempotency-Key required"}, {}
            if key not in self.telemetry_keys:
                self.telemetry_keys.add(key)
                self.telemetry.append(req.body)
            return 202, {"ok": True}, {}
        if req.path == "/api/platform/ledger/append" and req.method == "POST":
            if self.ledger_down:
                return 503, {"error": "down"}, {}
            results = []
            for b in (req.body or {}).get("blocks", []):
                idx = b.get("index")
                if idx < len(self.chain):
                    if self.chain[idx]["hash"] != b.get("hash"):
                        return 409, {"error": "conflict", "index": idx}, {}
                    results.append({"index": idx, "hash": b["hash"], "status": "duplicate"})
                    continue
                if idx > len(self.chain):
                    return 409, {"error": "gap", "expected_index": len(self.chain)}, {}
                if self.chain and b.get("prev_hash") != self.chain[-1]["hash"]:
                    return 409, {"error": "conflict", "index": idx}, {}
                self.chain.append(b)
                self.ledger_acks += 1
                results.append({"index": idx, "hash": b["hash"], "status": "acked"})
            head = self.chain[-1] if self.chain else None
            return 200, {"results": results,
                         "head": {"index": head["index"], "hash": head["hash"]} if head else None}, {}
        return 404, {"error": "not found"}, {}

"""Ledger forwarding: signed blocks go to the local chain first (always); with ``ledger_forward`` consent and
the managed token they are also sent to the platform's append endpoint, in order, in batches::

    POST {platform}/api/platform/ledger/append   Authorization: Bearer …   Idempotency-Key: sha256(first..last hash)
    {"blocks": [block, …], "public_keys": [hex, …]}
    → 200 {"results": [{"index", "hash", "status": "acked"|"duplicate"}], "head": {"index", "hash"}}
    → 409 {"error": "gap", "expected_index": k}        the platform's chain ends before these blocks
    → 409 {"error": "conflict", "index": k}            the platform holds a different block at k

``CARL_HOME/platform/ledger-forward.json`` (0600, atomic) remembers, per platform, the last block the platform
acknowledged (index and hash), saved after every batch. ``forward`` sends what follows it; ``replay`` starts
again from the genesis block (the platform answers ``duplicate`` for blocks it holds, so nothing is
acknowledged twice). A ``gap`` answer rewinds to the platform's ``expected_index``; a ``conflict`` is
``carl.telemetry.chain_conflict``. Network failures after the retries: ``carl.network`` (exit 4), with the
progress so far saved — the next ``forward`` resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable

from engine.errors import CARLError, CredentialError
from engine.home import CarlHome
from engine.platform import join, platform_base
from engine.platform.store import Corrupt, platform_dir, read_json, write_json

STATE_FILE = "ledger-forward.json"
BATCH = 100


class ChainConflict(CARLError):
    code = "carl.telemetry.chain_conflict"
    exit_code = 1
    default_hint = "The platform holds a different chain for this account (another CARL_HOME, or a re-initialised " \
                   "ledger); nothing was overwritten. Contact the platform or forward from the original CARL_HOME."


class ForwardRefused(CARLError):
    code = "carl.telemetry.refused"
    exit_code = 1
    default_hint = "The platform refused the blocks; check remote.managed.ledger_path and the platform's status."


def _state_path(home: CarlHome):
    return platform_dir(home) / STATE_FILE


def load_state(base: str, home: CarlHome) -> dict[str, Any]:
    try:
        data = read_json(_state_path(home)) or {}
    except Corrupt:
        data = {}
    got = data.get(base)
    return dict(got) if isinstance(got, dict) else {"acked_index": -1, "acked_hash": None}


def _save_state(base: str, home: CarlHome, state: dict[str, Any]) -> None:
    try:
        data = read_json(_state_path(home)) or {}
    except Corrupt:
        data = {}
    data[base] = state
    write_json(_state_path(home), data)


def pending(settings: Any, home: CarlHome | None = None) -> dict[str, Any]:
    """How many local blocks the platform has not acknowledged (no network)."""
    from engine.ledger import Ledger

    home = home or CarlHome.from_env()
    base = platform_base(settings)
    st = load_state(base, home)
    blocks = sum(1 for _ in Ledger(home).iter_blocks())
    return {"platform": base, "acked_index": st.get("acked_index", -1), "blocks": blocks,
            "pending": max(0, blocks - 1 - int(st.get("acked_index", -1)))}


class _Poster:
    def __init__(self, url: str, token: str, policy: Any, sleep: Callable[[float], None]):
        import httpx

        self.url, self.token, self.policy, self.sleep = url, token, policy, sleep
        self.client = httpx.Client(follow_redirects=True)

    def post(self, body: dict[str, Any], key: str) -> tuple[int, Any]:
        import httpx

        from engine.remote.base import Retryable, parse_retry_after, with_retries

        def once() -> tuple[int, Any]:
            try:
                r = self.client.post(self.url, json=body, timeout=self.policy.timeout_s,
                                     headers={"Authorization": f"Bearer {self.token}", "Idempotency-Key": key,
                                              "User-Agent": "carl", "Accept": "application/json"})
            except httpx.TimeoutException:
                raise Retryable(f"timeout after {self.policy.timeout_s:g}s") from None
            except httpx.TransportError as exc:
                raise Retryable(f"connection failed ({type(exc).__name__})") from None
            if r.status_code == 429:
                raise Retryable("HTTP 429", parse_retry_after(r.headers.get("retry-after")), 429)
            if r.status_code >= 500:
                raise Retryable(f"HTTP {r.status_code}", status=r.status_code)
            if r.status_code in (401, 403):
                raise CredentialError(f"managed: the credential was refused (HTTP {r.status_code}) during ledger "
                                      "forward", hint="Check $CARL_MANAGED_TOKEN.", context={"status": r.status_code})
            try:
                data = r.json()
            except ValueError:
                data = None
            return r.status_code, data

        return with_retries(once, self.policy, what="ledger forward", backend="managed", sleep=self.sleep)

    def close(self) -> None:
        self.client.close()


def forward(settings: Any, *, home: CarlHome | None = None, replay: bool = False, policy: Any = None,
            sleep: Callable[[float], None] = time.sleep, batch: int = BATCH) -> dict[str, Any]:
    """Send the blocks the platform has not acknowledged (``replay``: from genesis). See the module docstring."""
    from engine.ledger import Ledger
    from engine.platform import consent
    from engine.remote.base import RetryPolicy, require_token

    home = home or CarlHome.from_env()
    base = platform_base(settings)
    url = join(base, settings.ledger_path)
    if not consent.enabled("ledger_forward", home):
        raise consent.ConsentRequired(f"ledger forwarding to {url} is off (consent ledger_forward=off)",
                                      context={"flag": "ledger_forward", "url": url})
    from engine.platform.transport import require_secure

    require_secure(url)  # the bearer token only over https (or to a loopback host)
    token = require_token(settings.token_env, "managed")
    led = Ledger(home)
    blocks = list(led.iter_blocks())
    keys = led.public_keys()
    state = load_state(base, home)
    start = 0
    ai = int(state.get("acked_index", -1))
    if not replay and 0 <= ai < len(blocks) and blocks[ai].get("hash") == state.get("acked_hash"):
        start = ai + 1
    out = {"platform": base, "url": url, "replay": replay, "blocks": len(blocks), "sent": 0, "acked": 0,
           "duplicates": 0, "rewinds": 0}
    poster = _Poster(url, token, policy or RetryPolicy(), sleep)
    i = start
    try:
        while i < len(blocks):
            chunk = blocks[i:i + batch]
            key = hashlib.sha256("".join(b["hash"] for b in chunk).encode("ascii")).hexdigest()
            code, data = poster.post({"blocks": chunk, "public_keys": keys}, key)
            out["sent"] += len(chunk)
            if code == 409 and isinstance(data, dict) and data.get("error") == "gap" and out["rewinds"] < 3:
                k = data.get("expected_index")
                if isinstance(k, int) and 0 <= k < i:
                    out["rewinds"] += 1
                    i = k
                    continue
            if code == 409 and isinstance(data, dict) and data.get("error") == "conflict":
                raise ChainConflict(f"the platform holds a different block at index {data.get('index')}",
                                    context={"index": data.get("index"), "url": url})
            if code >= 300 or not isinstance(data, dict) or not isinstance(data.get("results"), list):
                raise ForwardRefused(f"ledger forward to {url} refused (HTTP {code})", context={"status": code})
            by_hash = {r.get("hash"): r.get("status") for r in data["results"] if isinstance(r, dict)}
            done = 0
            for b in chunk:
                s = by_hash.get(b["hash"])
                if s not in ("acked", "duplicate"):
                    break
                out["acked" if s == "acked" else "duplicates"] += 1
                done += 1
            if done:
                last = chunk[done - 1]
                if last["index"] >= int(state.get("acked_index", -1)) or replay:
                    state = {"acked_index": last["index"], "acked_hash": last["hash"], "at": time.time()}
                    _save_state(base, home, state)
            if done < len(chunk):
                raise ForwardRefused(f"the platform did not acknowledge block {chunk[done]['index']}",
                                     context={"index": chunk[done]["index"]})
            i += len(chunk)
    finally:
        poster.close()
    out["acked_index"] = state.get("acked_index", -1)
    out["pending"] = max(0, len(blocks) - 1 - int(out["acked_index"]))
    return out


def after_run(run_dir: Any, home: CarlHome | None = None) -> str | None:
    """At the end of a training run: forward the ledger's unacknowledged blocks when ``ledger_forward`` consent
    is on, the run's carl.yaml names the platform and the token is set. Returns a log line (None when nothing
    was tried). Never raises: blocks stay in the local chain and a later ``ledger forward`` sends them."""
    import os
    from pathlib import Path

    try:
        from engine.platform import consent

        if not consent.enabled("ledger_forward", home):
            return None
        import yaml

        from engine.config import validate_dict
        from engine.remote.base import RetryPolicy
        from engine.remote.config import remote_settings

        path = Path(run_dir) / "config.yaml"
        ms = remote_settings(validate_dict(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path))).managed
        if not (ms.url or ms.platform_url) or not os.environ.get(ms.token_env):
            return None
        out = forward(ms, home=home, policy=RetryPolicy(max_attempts=2, base_delay_s=0.2, max_delay_s=1.0,
                                                        timeout_s=5.0))
        return f"ledger forward to {out['url']}: {out['acked']} acknowledged, {out['pending']} pending"
    except CARLError as exc:
        return f"ledger forward failed ({exc.code}): {exc.message} — `carl --batch ledger forward` retries later"
    except Exception as exc:  # never let forwarding break the end of a run
        return f"ledger forward failed: {type(exc).__name__}: {exc}"

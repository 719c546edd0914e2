"""Run telemetry to the platform — only when ``telemetry`` consent is on and the managed token is set.

:func:`for_run` returns a :class:`Forwarder` (or None, and then nothing at all happens: no thread, no socket).
``emit`` never blocks: it puts the event on a bounded queue (full → the event is dropped and counted) and a
daemon thread POSTs each one to ``{platform}/api/platform/telemetry``::

    POST …/telemetry   Authorization: Bearer $CARL_MANAGED_TOKEN   Idempotency-Key: sha256(event_id "\\n" signal)
    {"event_id", "signal", "run_id", "ts", "data": {…secrets redacted…}}

One try per event with a short timeout; a failure (HTTP error, timeout, refused connection, anything) is counted
and remembered (``last_error``, code ``carl.telemetry.send_failed``), never raised: training is never blocked or
broken by telemetry. ``close`` waits a bounded time for the queue to drain and returns a one-line summary.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from typing import Any, Callable

from engine.errors import redact
from engine.jsonable import to_jsonable

SEND_TIMEOUT_S = 5.0
MAX_QUEUE = 1000
_STOP = object()


def idempotency_key(event_id: str, signal: str) -> str:
    return hashlib.sha256(f"{event_id}\n{signal}".encode("utf-8")).hexdigest()


class Forwarder:
    def __init__(self, url: str, token: str, *, run_id: str | None = None, timeout_s: float = SEND_TIMEOUT_S,
                 max_queue: int = MAX_QUEUE, clock: Callable[[], float] = time.time):
        self.url = url
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.clock = clock
        self._token = token
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self.sent = self.failed = self.dropped = 0
        self.last_error: str | None = None
        self._seq = 0
        self._thread = threading.Thread(target=self._loop, name="carl-telemetry", daemon=True)
        self._thread.start()

    def emit(self, signal: str, data: dict[str, Any], event_id: str | None = None) -> None:
        """Queue one event (never blocks, never raises)."""
        try:
            self._seq += 1
            eid = event_id or f"{self.run_id}:{signal}:{data.get('step', '')}:{data.get('phase', '')}:{self._seq}"
            body = {"event_id": eid, "signal": signal, "run_id": self.run_id, "ts": self.clock(),
                    "data": to_jsonable(redact(dict(data)))}
            self._q.put_nowait(body)
        except queue.Full:
            self.dropped += 1
        except Exception as exc:  # a malformed event must not reach the caller either
            self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]

    def _loop(self) -> None:
        try:
            import httpx

            client = httpx.Client(timeout=self.timeout_s)
        except Exception as exc:  # pragma: no cover - httpx is a core dependency
            self.last_error = f"{type(exc).__name__}: {exc}"
            client = None
        while True:
            body = self._q.get()
            if body is _STOP:
                break
            if client is None:
                self.failed += 1
                continue
            try:
                headers = {"Authorization": f"Bearer {self._token}", "User-Agent": "carl",
                           "Idempotency-Key": idempotency_key(body["event_id"], body["signal"])}
                r = client.post(self.url, json=body, headers=headers)
                if r.status_code >= 300:
                    raise RuntimeError(f"HTTP {r.status_code}")
                self.sent += 1
            except Exception as exc:
                self.failed += 1
                self.last_error = f"carl.telemetry.send_failed: {type(exc).__name__}: {exc}"[:300]
        if client is not None:
            client.close()

    def close(self, timeout: float = 10.0) -> str:
        """Let the queue drain for at most ``timeout`` seconds; a summary line."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._q.put(_STOP, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        pending = self._q.qsize()
        return (f"telemetry to {self.url}: {self.sent} sent, {self.failed} failed, {self.dropped} dropped"
                + (f", {pending} unsent" if pending else "") + (f" (last: {self.last_error})" if self.failed else ""))


def for_run(cfg: Any, run_id: str, home: Any = None) -> Forwarder | None:
    """A forwarder for this run when telemetry consent is on, carl.yaml names the platform and the token is
    set; otherwise None. Never raises."""
    try:
        from engine.platform import consent, join, platform_base
        from engine.remote.config import remote_settings

        if not consent.enabled("telemetry", home):
            return None
        ms = remote_settings(cfg).managed
        token = os.environ.get(ms.token_env, "").strip()
        if not token or not (ms.url or ms.platform_url):
            return None
        from engine.platform.transport import require_secure

        url = join(platform_base(ms), ms.telemetry_path)
        require_secure(url)  # never the bearer token over plain http (a loopback host excepted): no telemetry
        return Forwarder(url, token, run_id=run_id)
    except Exception:
        return None

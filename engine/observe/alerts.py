"""Alerts: one webhook POST per new warn/bad finding of a run, off the caller's thread.

``AlertSender(url, run=…)``; call :meth:`AlertSender.offer` with the health findings each time they are recomputed
(``--follow``, the worker, ``metrics serve``): a finding is *new* the first time its code is open (no
``recovered_at``); it is sent once, and again only after it recovered and opened anew. Each POST carries one JSON
object

    {"text", "run", "code", "severity", "step", "message", "hint"}

``text`` is one line Slack and Discord show as is (both read a ``text``/``content``-style field; Discord wants
``content``, so ``text`` is also copied there). Sending happens on one daemon thread: never blocks the follow;
at most one POST per ``min_interval`` seconds (rate limit; a burst waits in the queue, which holds at most
``max_queue`` alerts — beyond that the oldest is dropped and counted); a transport error or a 5xx/429 is retried
``retries`` times with exponential backoff; a 4xx is not. Every alert delivered is a ledger block
(``alert.sent``: url host, code, severity, step, run), written through ``engine.ledger.record`` when a ledger home
is given. :meth:`close` flushes what is queued (bounded by a timeout).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

ALERT_SEVERITIES = ("warn", "bad")


def alert_payload(finding: dict[str, Any], run: str | None) -> dict[str, Any]:
    step = finding.get("step", finding.get("last_step", finding.get("first_step")))
    sev = finding.get("severity", "warn")
    text = (f"carl {sev.upper()} {finding.get('code')} in run {run or '?'} at step {step}: "
            f"{finding.get('message', '')} — {finding.get('hint', '')}")
    return {"text": text, "content": text[:2000], "run": run, "code": finding.get("code"), "severity": sev,
            "step": step, "message": finding.get("message", ""), "hint": finding.get("hint", "")}


class AlertTracker:
    """Which findings are *new* (the dedupe rule, without any sending): what the workbench needs for its bell and
    banner, and what :class:`AlertSender` uses. ``new(findings, run)`` returns the alert payloads of the warn/bad
    findings that just opened — once per opening; a recovered finding may open, and alert, again."""

    def __init__(self) -> None:
        self._open: set[str] = set()

    def new(self, findings: Iterable[dict[str, Any]], run: str | None) -> list[dict[str, Any]]:
        out = []
        for f in findings:
            code = f.get("code")
            if not code or f.get("severity") not in ALERT_SEVERITIES:
                continue
            if f.get("recovered_at") is not None:
                self._open.discard(code)
                continue
            if code in self._open:
                continue
            self._open.add(code)
            out.append(alert_payload(f, run))
        return out


@dataclass
class AlertStats:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    ledger_errors: int = 0
    delivered: list[dict[str, Any]] = field(default_factory=list)  # payloads delivered (newest last, bounded)


class AlertSender:
    def __init__(self, url: str, *, run: str | None = None, min_interval: float = 1.0, retries: int = 3,
                 timeout: float = 5.0, max_queue: int = 100, ledger_home: Any = None,
                 on_result: Callable[[dict[str, Any], bool, str | None], None] | None = None):
        p = urlparse(url)
        if p.scheme not in ("http", "https") or not p.netloc:
            from engine.errors import ValidationError

            raise ValidationError(f"not a webhook URL: {url!r}", hint="Pass an http(s):// URL (Slack or Discord "
                                                                      "incoming webhook, or any JSON receiver).")
        self.url, self.run = url, run
        self.min_interval, self.retries, self.timeout = min_interval, retries, timeout
        self.ledger_home = ledger_home
        self.on_result = on_result
        self.stats = AlertStats()
        self.tracker = AlertTracker()
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._max_queue = max_queue
        self._last_post = 0.0
        self._thread = threading.Thread(target=self._loop, name="carl-alerts", daemon=True)
        self._thread.start()

    # ── the caller's side (never blocks) ──

    def offer(self, findings: Iterable[dict[str, Any]], *, run: str | None = None) -> list[dict[str, Any]]:
        """Queue an alert for each finding that is newly open; returns the payloads queued."""
        out = self.tracker.new(findings, run or self.run)
        for payload in out:
            if self._q.qsize() >= self._max_queue:
                try:
                    self._q.get_nowait()
                    self.stats.dropped += 1
                except queue.Empty:
                    pass
            self._q.put(payload)
        return out

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (for at most ``timeout`` seconds), then stop the thread."""
        self._q.put(None)
        self._thread.join(timeout)

    # ── the sender thread ──

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout) as client:
            while True:
                payload = self._q.get()
                if payload is None:
                    return
                wait = self._last_post + self.min_interval - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                ok, err = self._post(client, payload)
                self._last_post = time.monotonic()
                if ok:
                    self.stats.sent += 1
                    self.stats.delivered.append(payload)
                    del self.stats.delivered[:-50]
                    self._record(payload)
                else:
                    self.stats.failed += 1
                if self.on_result is not None:
                    try:
                        self.on_result(payload, ok, err)
                    except Exception:  # noqa: BLE001 — a reporting callback must not kill the sender
                        pass

    def _post(self, client: Any, payload: dict[str, Any]) -> tuple[bool, str | None]:
        import httpx

        err = None
        for attempt in range(self.retries + 1):
            try:
                r = client.post(self.url, json=payload)
                if r.status_code < 300:
                    return True, None
                err = f"HTTP {r.status_code}"
                if r.status_code < 500 and r.status_code != 429:
                    return False, err  # the receiver refused it: retrying will not help
            except httpx.HTTPError as exc:
                err = type(exc).__name__
            if attempt < self.retries:
                time.sleep(min(4.0, 0.25 * 2 ** attempt))
        return False, err

    def _record(self, payload: dict[str, Any]) -> None:
        if self.ledger_home is None:
            return
        from engine import ledger

        try:
            ledger.record("alert.sent", {"host": urlparse(self.url).hostname, "run": payload["run"],
                                         "code": payload["code"], "severity": payload["severity"],
                                         "step": payload["step"]}, home=self.ledger_home)
        except Exception:  # noqa: BLE001 — the alert went out; a ledger write failure is counted, not raised
            self.stats.ledger_errors += 1


def resolve_webhook(value: str | None) -> str | None:
    """A webhook setting: a URL, or ``env:NAME`` (the URL is read from that variable: webhook URLs carry their
    secret in the path, so carl.yaml should name the variable rather than hold the URL)."""
    if not value:
        return None
    if value.startswith("env:"):
        import os

        return os.environ.get(value[4:]) or None
    return value


def run_settings(run_dir: Any) -> dict[str, Any] | None:
    """The resolved carl config a carl run was started with (``runs/<id>/config.yaml``), or None."""
    if run_dir is None:
        return None
    from pathlib import Path

    import yaml

    try:
        d = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return d if isinstance(d, dict) else None

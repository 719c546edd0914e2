"""The workbench side of alerts (issue 26 item 4): a watched run's *new* warn/bad health finding rings the
terminal bell once and shows a notification naming it; a finding that recovers says so (no bell). Which findings
are new is engine.observe.alerts.AlertTracker's rule (the same one the webhook sender uses). Also the short phase
and health words both the train and the observe screen show."""

from __future__ import annotations

from typing import Any, Iterable

from rich.markup import escape

from engine.observe.alerts import AlertTracker

# What each phase means (docs/observe.md), when the summary gives no reason of its own (phase_reason)
PHASE_MEANS = {
    "guessing": "no sustained rise of Φ from where the run started (Φ's own trajectory, not σ)",
    "crystallizing": "Φ rose from where the run started and is still rising",
    "knowing": "Φ rose from where the run started and has levelled off",
}


def phase_words(summary: dict[str, Any] | None) -> tuple[str, str]:
    """(``GUESSING``-style label, its reason) of an observe summary; ``("no Φ", reason)`` without Φ."""
    s = summary or {}
    phase = s.get("phase")
    return (phase or "no Φ").upper(), s.get("phase_reason") or PHASE_MEANS.get(phase or "", "")


def health_badge(summary: dict[str, Any] | None) -> str:
    """Rich markup: the open findings by severity, and how many recovered (a recovered one is never BAD)."""
    h = (summary or {}).get("health") or {}
    status = h.get("status")
    if not status:
        return ""
    if status == "empty":
        return "[yellow]∅ empty[/]"
    findings = h.get("findings") or []
    live = [f for f in findings if f.get("recovered_at") is None]
    rec = len(findings) - len(live)
    tail = f" [green]↺ {rec} recovered[/]" if rec else ""
    if status == "ok":
        return f"[green]✓ ok[/]{tail}"
    bad = sum(1 for f in live if f.get("severity") == "bad")
    if bad:
        return f"[red]✗ {bad} bad[/]{tail}"
    return f"[yellow]⚠ {len(live)} warn[/]{tail}"


class HealthAlerts:
    """Feed it each recomputed summary of the watched run; it rings and notifies on the host screen.

    ``prime=True`` (the first summary of a run just opened) records what is already there without ringing: the
    badge and the health tab show those; an alert is for what happens while the user watches."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tracker = AlertTracker()
        self.alerted: dict[str, dict[str, Any]] = {}  # code → the finding last alerted (open)

    def update(self, findings: Iterable[dict[str, Any]], run: str | None, *,
               prime: bool = False) -> list[tuple[str, str]]:
        """The notifications due: ``[(text, severity)]`` with severity ``error``/``warning``/``information``."""
        findings = list(findings)
        out: list[tuple[str, str]] = []
        for f in findings:  # recoveries of what was alerted (or seen open) before
            code = f.get("code")
            if code in self.alerted and f.get("recovered_at") is not None:
                self.alerted.pop(code)
                if not prime:
                    out.append((f"✓ RECOVERED {code} in run {run or '?'} at step {f['recovered_at']}",
                                "information"))
        for p in self.tracker.new(findings, run):
            self.alerted[p["code"]] = p
            if not prime:
                sev = p["severity"]
                text = (f"{'✗' if sev == 'bad' else '⚠'} {sev.upper()} {p['code']} in run {run or '?'} "
                        f"at step {p['step']}: {p['message']}")
                out.append((text, "error" if sev == "bad" else "warning"))
        return out

    def announce(self, screen: Any, summary: dict[str, Any] | None, run: str | None, *,
                 prime: bool = False) -> list[tuple[str, str]]:
        """Update from ``summary`` and show what is due on ``screen``: one bell for any new warn/bad finding, one
        notification (a banner at the screen's corner, ``HEALTH`` titled) per finding that opened or recovered."""
        notes = self.update(((summary or {}).get("health") or {}).get("findings") or [], run, prime=prime)
        if any(sev != "information" for _, sev in notes):
            screen.app.bell()
        for text, sev in notes:
            screen.notify(escape(text), title="health", severity=sev, timeout=12)
        return notes

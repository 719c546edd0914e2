"""The workbench side of alerts: a watched run's NEW warn/bad finding rings the bell once and shows a
notification naming it; the same finding recovering says so (no bell); what was there when the run opened is
shown on the badge, never rung. The phase label's reason is on screen. Pilot tests: the app's bell is counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_observe_screen import frame, make_app, settle

pytestmark = pytest.mark.anyio


def _frame(s: int, entropy: float) -> dict:
    d = frame(s)
    d["entropy"] = entropy
    return d


def _append(path: Path, frames: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for d in frames:
            f.write(json.dumps(d) + "\n")


def _notes(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def _wait(pilot, cond, tries: int = 3000) -> None:
    for _ in range(tries):
        if cond():
            return
        await pilot.pause(0.02)
    raise AssertionError("condition not met")


async def test_observe_rings_once_for_a_new_finding_and_says_when_it_recovers(tmp_path):
    d = tmp_path / "home" / "runs" / "live-1"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"run_id": "live-1", "status": "running"}))
    _append(d / "frames.jsonl", [_frame(s, 2.0) for s in range(20)])
    app = make_app(tmp_path, run="live-1")
    rings: list[int] = []
    app.bell = lambda: rings.append(1)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot, 20)
        assert screen.following and not rings and not _notes(app)
        _append(d / "frames.jsonl", [_frame(s, 0.05) for s in range(20, 26)])  # entropy collapses
        await _wait(pilot, lambda: any("entropy_collapse" in n for n in _notes(app)))
        screen = await settle(pilot, 26)
        assert rings == [1]
        text = next(n for n in _notes(app) if "entropy_collapse" in n)
        assert text.startswith("⚠ WARN entropy_collapse in run live-1 at step")
        assert "policy entropy fell" in text
        assert "warn" in str(screen.query_one("#obs-health-badge").render())
        _append(d / "frames.jsonl", [_frame(s, 0.05) for s in range(26, 28)])  # still collapsed: no new alert
        await settle(pilot, 28)
        assert rings == [1] and sum("entropy_collapse" in n for n in _notes(app)) == 1
        _append(d / "frames.jsonl", [_frame(s, 2.0) for s in range(28, 34)])  # it recovers
        await _wait(pilot, lambda: any(n.startswith("✓ RECOVERED entropy_collapse") for n in _notes(app)))
        screen = await settle(pilot, 34)
        assert rings == [1]  # a recovery is said, not rung
        assert "✓ RECOVERED entropy_collapse in run live-1 at step 28" in _notes(app)
        badge = str(screen.query_one("#obs-health-badge").render())
        assert "ok" in badge and "1 recovered" in badge


async def test_observe_does_not_ring_for_what_was_there_when_the_run_opened(tmp_path):
    d = tmp_path / "home" / "runs" / "old-1"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"run_id": "old-1", "status": "completed"}))
    _append(d / "frames.jsonl", [_frame(s, 2.0 if s < 20 else 0.05) for s in range(26)])
    app = make_app(tmp_path, run="old-1")
    rings: list[int] = []
    app.bell = lambda: rings.append(1)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot, 26, ended=True)
        assert not rings and not _notes(app)
        assert "1 warn" in str(screen.query_one("#obs-health-badge").render())
        reason = str(screen.query_one("#obs-reason").render())
        assert screen.query_one("#obs-reason").display
        assert reason == f"{screen.summary['phase']}: {screen.summary['phase_reason']}"

"""The workbench side of alerts: a watched run's NEW warn/bad finding rings the bell once and shows a
notification naming it; the same finding recovering says so (no bell); what was there when the run opened is
shown on the badge, never rung. The phase label's reason is on screen. Pilot tests: the app's bell is counted."""

from __future__ import annotations

import json
import subprocess
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


def _train_frames(steps, entropy: float) -> list[dict]:
    from tests.test_train_screen import frame as train_frame

    out = []
    for s in steps:
        f = train_frame(s)
        f.entropy = entropy
        out.append(f.to_dict())
    return out


async def test_train_rings_once_for_a_new_finding_shows_the_phase_reason_and_the_recovery(tmp_path):
    from tests.test_train_screen import make_app as train_app
    from tests.test_train_screen import make_run as train_run

    stand_in = subprocess.Popen(["sleep", "120"])  # a live "worker" process, so the run reads as running
    try:
        await _watch_train(tmp_path, train_app, train_run, stand_in.pid)
    finally:
        stand_in.kill()
        stand_in.wait()


async def _watch_train(tmp_path, train_app, train_run, pid):
    d = train_run(tmp_path / "home", "20250101-120000-live", [], status="running", pid=pid)
    _append(d / "frames.jsonl", _train_frames(range(1, 21), 0.9))
    app = train_app(tmp_path, run="20250101-120000-live")
    rings: list[int] = []
    app.bell = lambda: rings.append(1)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await _wait(pilot, lambda: len(screen.frames) == 20 and screen.summary is not None and screen.following)
        assert screen.following and not rings and not _notes(app)
        label, reason = screen.summary["phase"].upper(), screen.summary["phase_reason"]
        assert f"phase {label}: {reason}" in str(screen.query_one("#status").render()).replace("\n", " ")
        _append(d / "frames.jsonl", _train_frames(range(21, 27), 0.02))  # entropy collapses
        await _wait(pilot, lambda: any("entropy_collapse" in n for n in _notes(app)))
        assert rings == [1]
        assert next(n for n in _notes(app) if "entropy_collapse" in n).startswith(
            "⚠ WARN entropy_collapse in run 20250101-120000-live at step")
        _append(d / "frames.jsonl", _train_frames(range(27, 33), 0.9))  # it recovers, and the run ends
        meta = json.loads((d / "meta.json").read_text())
        (d / "meta.json").write_text(json.dumps({**meta, "status": "completed"}))
        await _wait(pilot, lambda: any(n.startswith("✓ RECOVERED entropy_collapse") for n in _notes(app)))
        await pilot.pause()
        assert rings == [1]
        assert "1 recovered" in str(screen.query_one("#status").render())


async def test_train_rings_for_a_finding_in_the_first_frames_of_a_run_it_opened_empty(tmp_path):
    """A run started from the train screen opens with no frames: its first summary already counts (nothing was
    there to keep quiet about)."""
    from tests.test_train_screen import make_app as train_app
    from tests.test_train_screen import make_run as train_run

    stand_in = subprocess.Popen(["sleep", "120"])
    try:
        d = train_run(tmp_path / "home", "20250101-120000-new", [], status="running", pid=stand_in.pid)
        app = train_app(tmp_path, run="20250101-120000-new")
        rings: list[int] = []
        app.bell = lambda: rings.append(1)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            await _wait(pilot, lambda: screen.following)
            _append(d / "frames.jsonl", _train_frames(range(1, 21), 0.9) + _train_frames(range(21, 27), 0.02))
            await _wait(pilot, lambda: any("entropy_collapse" in n for n in _notes(app)))
            assert rings == [1]
    finally:
        stand_in.kill()
        stand_in.wait()


# Snapshots of the new states (baselines are made by the integrator after merging: not committed here).
SIZES = [(80, 24), (120, 40)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_observe_alert_banner_snapshot(snap_compare, snap_home, snap_env, size):
    d = snap_home / "home" / "runs" / "live-1"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"run_id": "live-1", "status": "running"}))
    _append(d / "frames.jsonl", [_frame(s, 2.0) for s in range(20)])
    app = make_app(snap_home, run="live-1")
    app.bell = lambda: None

    async def run_before(pilot):
        await settle(pilot, 20)
        _append(d / "frames.jsonl", [_frame(s, 0.05) for s in range(20, 26)])
        await _wait(pilot, lambda: any("entropy_collapse" in n for n in _notes(pilot.app)))
        await settle(pilot, 26)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_observe_recovered_health_tab_snapshot(snap_compare, snap_home, snap_env, size):
    d = snap_home / "home" / "runs" / "old-1"
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"run_id": "old-1", "status": "completed"}))
    _append(d / "frames.jsonl", [_frame(s, 0.05 if 20 <= s < 26 else 2.0) for s in range(34)])
    app = make_app(snap_home, run="old-1")

    async def run_before(pilot):
        screen = await settle(pilot, 34, ended=True)
        assert "1 recovered" in str(screen.query_one("#obs-health-badge").render())

    assert snap_compare(app, terminal_size=size, press=["2"], run_before=run_before)

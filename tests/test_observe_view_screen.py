"""The observe screen's views, driven by keys only: an overlay of runs marked with space in the picker (legend
and run-diff numbers beside the chart), EMA smoothing (e), the x-axis (x) and log-y (L) — snapshots at 80×24
and 120×40 plus pilot checks of what the charts hold. Waits are on conditions, never blind sleeps."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from engine.frames import FrameWriter
from engine.observe.view import ema
from screens.observe import ObserveScreen
from screens.widgets.charts import MetricChart
from tests.test_observe_screen import SIZES, make_app, settle, settle_underline

RUNS = (("20250101-base", 0.0, 0.0), ("20250102-warm", 0.04, 0.1), ("20250103-hot", 0.08, 0.25))


def frame(s: int, dphi: float, dr: float) -> dict:
    phi = 0.05 + dphi + 0.3 / (1 + math.exp(-(s - 30) / 4))
    return {"step": s, "phi": round(phi, 6), "entropy": round(2.0 - 0.02 * s, 6),
            "reward_mean": round(0.15 + dr + 0.0075 * s + 0.05 * math.sin(s), 6),
            "kl": round(0.001 * s * (1 + dr), 6), "frac_reward_zero_std": round(0.5 - 0.005 * s, 6),
            "loss": 0.0, "timestamp": 1_700_000_000.0 + 2.0 * s}


def make_runs(home: Path, n: int = 60) -> None:
    for i, (rid, dphi, dr) in enumerate(RUNS):
        d = home / "runs" / rid
        with FrameWriter(d / "frames.jsonl") as w:
            for s in range(n):
                w.write(frame(s, dphi, dr))
        (d / "meta.json").write_text('{"status": "completed"}')
        t = 1_700_000_000 + 100 * i  # fixed mtimes: the picker lists the newest first, deterministically
        for p in (d / "frames.jsonl", d / "meta.json", d):
            os.utime(p, (t, t))


async def until(pilot, cond, limit: int = 3000) -> None:
    for _ in range(limit):
        if cond():
            return
        await pilot.pause(0.02)
    raise AssertionError("condition not reached")


async def open_overlay(pilot, marks: int = 2) -> ObserveScreen:
    """The picker opens in the runs list on the newest run → space marks `marks` runs → Enter overlays them."""
    screen = pilot.app.screen
    await until(pilot, lambda: screen.query_one("#obs-runs").option_count == len(RUNS))
    for i in range(marks):
        await pilot.press("space")
        if i + 1 < marks:
            await pilot.press("down")
    await pilot.press("enter")
    await until(pilot, lambda: not screen.overlay_pending and len(screen.overlay_runs) == marks - 1
                and len(screen.frames) == 60 and screen.summary_current)
    await settle_underline(pilot, screen)
    screen.flush()
    await pilot.pause()
    screen.flush()
    await pilot.pause()
    return screen


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_overlay_snapshot(snap_compare, snap_home, snap_env, size):
    make_runs(snap_home / "home")
    app = make_app(snap_home)

    async def run_before(pilot):
        screen = await open_overlay(pilot, marks=3)
        assert [label for label, _ in screen._overlay_all()] == ["20250103-hot", "20250102-warm", "20250101-base"]
        assert screen.overlay_metric == "phi"

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_overlay_next_metric_smoothed_snapshot(snap_compare, snap_home, snap_env, size):
    make_runs(snap_home / "home")
    app = make_app(snap_home)

    async def run_before(pilot):
        screen = await open_overlay(pilot, marks=2)
        await pilot.press("m", "e", "e")  # Φ → reward_mean; EMA 0.6 → 0.9
        screen.flush()
        await pilot.pause()
        assert screen.overlay_metric == "reward_mean" and screen.view.smoothing == 0.9
        chart = screen.query_one("#chart-overlay", MetricChart)
        raw = [frame(s, 0.08, 0.25)["reward_mean"] for s in range(60)]
        assert chart._series["20250103-hot"][1] == pytest.approx(ema(raw, 0.9))
        text = str(screen.query_one("#obs-diff").render())
        assert "20250102-warm" in text and "Δmean -0.15" in text  # warm − hot reward: 0.1 − 0.25

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_smoothing_snapshot(snap_compare, snap_home, snap_env, size):
    make_runs(snap_home / "home")
    app = make_app(snap_home, run="20250101-base")

    async def run_before(pilot):
        screen = await settle(pilot, 60, ended=True)
        await pilot.press("e", "e", "e")  # 0.6, 0.9, 0.99
        screen.flush()
        await pilot.pause()
        assert screen.view.smoothing == 0.99
        assert "EMA 0.99" in str(screen.query_one("#obs-view").render())
        phi = screen.query_one("#chart-phi", MetricChart)._series["phi"][1]
        assert phi == pytest.approx(ema([frame(s, 0, 0)["phi"] for s in range(60)], 0.99))

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.anyio
async def test_x_axis_and_log_y_keys(tmp_path):
    make_runs(tmp_path / "home")
    app = make_app(tmp_path, run="20250102-warm")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot, 60, ended=True)
        other = screen.query_one("#chart-other", MetricChart)
        assert screen.other_metric == "frac_reward_zero_std"  # TRL's diagnostics come first, not the loss
        await pilot.press("x")
        screen.flush()
        xs = screen.query_one("#chart-phi", MetricChart)._series["phi"][0]
        assert xs[0] == 0.0 and xs[-1] == 2.0 * 59  # wall seconds since the run's first frame
        await pilot.press("L")
        screen.flush()
        assert screen.view.log_y and other.log_y
        kl = screen.query_one("#chart-entropy", MetricChart)._series["entropy"][1]
        assert min(kl) > 0
        await pilot.press("m", "m")  # frac_reward_zero_std → kl → grad_norm? (absent) → …
        screen.flush()
        assert screen.other_metric != "frac_reward_zero_std"
        assert "x wall s · log y" in str(screen.query_one("#obs-view").render())
        await pilot.press("x", "L")
        screen.flush()
        assert screen.view.is_default and not screen.query_one("#obs-view").display
        assert screen.query_one("#chart-phi", MetricChart)._series["phi"][0][-1] == 59


@pytest.mark.anyio
async def test_marks_are_bounded_and_single_enter_opens_one_run(tmp_path):
    make_runs(tmp_path / "home")
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = pilot.app.screen
        await until(pilot, lambda: screen.query_one("#obs-runs").option_count == len(RUNS))
        await pilot.press("space")  # the picker opens in the list, on the newest run
        assert screen.marked == ["20250103-hot"]
        assert "1 marked" in str(screen.query_one("#obs-error").render())
        await pilot.press("space")  # unmark
        assert screen.marked == []
        await pilot.press("down", "enter")  # nothing marked: Enter opens the one run
        await until(pilot, lambda: screen.source is not None and len(screen.frames) == 60)
        assert screen.source.run == "20250102-warm" and not screen.overlay_runs
        assert screen.query_one("#obs-grid").display and not screen.query_one("#obs-overlay").display

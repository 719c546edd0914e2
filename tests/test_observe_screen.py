"""The observe screen: snapshots of a static run and of a followed run after a few new frames (80×24 and
120×40), health and frame tabs, the source picker, a slow source that does not freeze the UI, and the bounded
chart redraw rate. Waits are on conditions (frame counts), never blind sleeps."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from carl_tui.app import CarlApp
from engine.frames import FrameWriter
from engine.home import CarlHome
from screens.context import WorkbenchContext
from screens.observe import ObserveScreen
from screens.widgets.charts import MetricChart

SIZES = [(80, 24), (120, 40)]


def frame(s: int, *, sick: bool = False) -> dict:
    phi = 0.05 + 0.3 / (1 + math.exp(-(s - 30) / 4))
    d = {"step": s, "phi": round(phi, 6), "entropy": round(2.0 - 0.02 * s, 6), "task_reward": round(0.01 * s, 6),
         "carl_reward": round(0.3 + 0.005 * s, 6), "reward_mean": round(0.15 + 0.0075 * s, 6),
         "gate": "A" if s < 20 else "B", "loss": round(0.5 - 0.004 * s, 6), "kl": round(0.001 * s, 6),
         "completion_length": 40.0 + (s % 3), "timestamp": 1_700_000_000.0 + s}
    if sick:
        d.update(entropy=2.0 if s < 8 else 0.01, frac_reward_zero_std=0.95 if s > 30 else 0.1,
                 phi=0.1, loss=float("nan") if s == 41 else 0.3)
    return d


def make_run(home: Path, run_id: str, steps: range, *, status: str | None = None, sick: bool = False) -> Path:
    d = home / "runs" / run_id
    with FrameWriter(d / "frames.jsonl") as w:
        for s in steps:
            w.write(frame(s, sick=sick))
    if status:
        (d / "meta.json").write_text(json.dumps({"run_id": run_id, "status": status}))
    return d


def make_app(root: Path, **screen_args) -> CarlApp:
    ctx = WorkbenchContext(home=CarlHome(root / "home"), cwd=root, screen_args=screen_args,
                           clock=lambda: 1_700_000_000.0)
    return CarlApp(ctx=ctx, screen="observe")


def underline_settled(screen) -> bool:
    """The tab bar's underline sits under the active tab (it moves after a refresh once a tab is switched)."""
    from textual.widgets._tabs import Underline

    tabs = screen.query_one("#obs-tabs Tabs")
    try:
        active = tabs.query_one("#tabs-list > Tab.-active")
    except Exception:  # noqa: BLE001 — no active tab yet
        return False
    ul = tabs.query_one(Underline)
    span = active.virtual_region.shrink(active.styles.gutter).column_span
    return ul.show_highlight and (ul.highlight_start, ul.highlight_end) == span


async def settle_underline(pilot, screen) -> None:
    """The tab underline is placed after a refresh from the active tab's region; under load that region can still
    be the pre-layout one, and the underline then stays put until the next resize. Ask again (without animation)
    until it sits under the active tab, so a snapshot never depends on timing."""
    tabs = screen.query_one("#obs-tabs Tabs")
    for _ in range(3000):
        if underline_settled(screen):
            return
        tabs._highlight_active(animate=False)  # what Tabs does itself on a resize
        await pilot.pause(0.02)
    raise AssertionError("the tab underline never settled")


async def settle(pilot, n: int, *, ended: bool | None = None, tries: int = 3000) -> ObserveScreen:
    """Wait until the screen holds n frames and a summary of all of them (and, if asked, the run ended), then
    apply and draw everything."""
    screen = pilot.app.screen
    assert isinstance(screen, ObserveScreen)
    for _ in range(tries):
        if (len(screen.frames) >= n and not screen.loading and screen.summary_current
                and (ended is None or screen.ended == ended)):
            break
        await pilot.pause(0.02)
    screen.flush()
    await pilot.pause()
    screen.flush()
    await pilot.pause()
    await settle_underline(pilot, screen)
    assert len(screen.frames) == n
    return screen


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_static_run_snapshot(snap_compare, snap_home, snap_env, size):
    make_run(snap_home / "home", "20250101-demo", range(60), status="completed")
    app = make_app(snap_home, run="20250101")

    async def run_before(pilot):
        screen = await settle(pilot, 60, ended=True)
        assert screen.summary["phase"] == "knowing"

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_followed_run_snapshot_after_new_frames(snap_compare, snap_home, snap_env, size):
    d = make_run(snap_home / "home", "live-run", range(24))
    app = make_app(snap_home, file=str(d / "frames.jsonl"), poll=0.05)

    async def run_before(pilot):
        await settle(pilot, 24)
        with FrameWriter(d / "frames.jsonl") as w:
            for s in range(24, 36):
                w.write(frame(s))
        screen = await settle(pilot, 36)
        assert screen.following and not screen.ended
        assert [f.step for f in screen.frames] == list(range(36))
        # the header and badges describe all 36 frames, not the first 24 (Φ crosses σ at step 30)
        assert screen.summary["n_frames"] == 36 and screen.summary["phase"] == "crystallizing"

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_health_tab_snapshot(snap_compare, snap_home, snap_env):
    make_run(snap_home / "home", "sick-run", range(50), status="failed", sick=True)
    app = make_app(snap_home, run="sick-run")

    async def run_before(pilot):
        screen = await settle(pilot, 50, ended=True)
        codes = {f["code"] for f in screen.summary["health"]["findings"]}
        assert {"entropy_collapse", "zero_std_rewards", "nonfinite_loss", "stalled_phi"} <= codes

    assert snap_compare(app, press=["2"], terminal_size=(80, 24), run_before=run_before)


def test_frames_tab_snapshot(snap_compare, snap_home, snap_env):
    make_run(snap_home / "home", "r", range(30), status="completed")
    app = make_app(snap_home, run="r")

    async def run_before(pilot):
        await settle(pilot, 30, ended=True)

    assert snap_compare(app, press=["3"], terminal_size=(80, 24), run_before=run_before)


@pytest.mark.anyio
async def test_picker_opens_a_typed_path_and_metric_chooser_cycles(tmp_path):
    d = make_run(tmp_path / "home", "picked", range(40), status="completed")
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert screen.query_one("#obs-tabs").active == "source"  # nothing given: the picker
        await pilot.press("slash", *str(d / "frames.jsonl"), "enter")
        await settle(pilot, 40, ended=True)
        assert screen.query_one("#obs-tabs").active == "charts" and screen.source.run == "picked"
        other = screen.query_one("#chart-other", MetricChart)
        first = screen.other_metric
        await pilot.press("m")
        assert screen.other_metric != first and other.title.startswith(screen.other_metric)
        await pilot.press("M")
        assert screen.other_metric == first
        # the recent-runs list offers the run too
        await pilot.press("s")
        assert screen.query_one("#obs-runs").get_option_at_index(0).id == "picked"
        await pilot.press("enter")  # s focuses the list (never the box): enter opens the highlighted run
        await settle(pilot, 40, ended=True)


class HeldServer:
    """A loopback HTTP server that holds every request until released, then answers 404 (not a dashboard)."""

    def __init__(self):
        self.release = threading.Event()
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                outer.release.wait(30)
                self.send_response(404)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"detail": "Not Found"}')

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.anyio
async def test_a_slow_source_never_freezes_the_ui(tmp_path):
    with HeldServer() as srv:
        app = make_app(tmp_path, url=srv.url, run="r", project="p")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            for _ in range(3000):
                if srv.hits:
                    break
                await pilot.pause(0.02)
            assert srv.hits == 1 and screen.loading  # the worker is stuck in the request …
            await pilot.press("3")  # … and the UI still answers keys
            assert screen.query_one("#obs-tabs").active == "frames" and screen.loading
            await pilot.press("2")
            assert screen.query_one("#obs-tabs").active == "health"
            srv.release.set()
            for _ in range(1200):
                if screen.error:
                    break
                await pilot.pause(0.05)
            assert screen.error and "not a trackio dashboard" in screen.error
            assert screen.query_one("#obs-tabs").active == "source"


@pytest.mark.anyio
async def test_chart_redraws_are_bounded_whatever_the_frame_rate(tmp_path):
    d = make_run(tmp_path / "home", "fast", range(1))
    app = make_app(tmp_path, run="fast", poll=0.01)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot, 1)
        chart = screen.query_one("#chart-phi", MetricChart)
        before = chart.redraws
        start = time.monotonic()
        with FrameWriter(d / "frames.jsonl") as w:
            for s in range(1, 401):
                w.write(frame(s % 60))
                if s % 4 == 0:
                    await pilot.pause(0.005)
        screen = await settle(pilot, 401)
        elapsed = time.monotonic() - start
        redraws = chart.redraws - before
        assert len(chart) == 401
        # ≤ 10 per second (+2: the first tick and the explicit flush in settle), and far fewer than batches
        assert redraws <= elapsed * 10 + 2, (redraws, elapsed)
        assert redraws < 100


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_collapse_onset_banner_snapshot(snap_compare, snap_home, snap_env, size):
    """A recorded real collapsing run (tests/data/coherence): the header says where the collapse began, key 2
    opens the health tab with the collapse.onset finding."""
    src = Path(__file__).parent / "data" / "coherence" / "frames" / "sparse-ungated-0.jsonl"
    d = snap_home / "home" / "runs" / "20250101-collapse"
    d.mkdir(parents=True)
    (d / "frames.jsonl").write_bytes(src.read_bytes())
    (d / "meta.json").write_text(json.dumps({"run_id": "20250101-collapse", "status": "completed"}))
    app = make_app(snap_home, run="20250101-collapse")

    async def run_before(pilot):
        screen = await settle(pilot, 200, ended=True)
        assert any(f["code"] == "collapse.onset" for f in screen.summary["health"]["findings"])
        await pilot.press("2")
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)

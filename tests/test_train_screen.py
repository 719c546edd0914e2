"""Train screen: snapshots of a recorded run (frames written here) at 80×24 and 120×40; re-attach to a live
run with new frames arriving; stop by key."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest

from carl_tui.app import CarlApp
from engine.frames import Frame, FrameWriter
from engine.home import CarlHome
from screens.context import WorkbenchContext
from screens.train import TrainScreen

SIZES = [(80, 24), (120, 40)]
PLAN = {"config": None, "preset": "tiny-cpu", "model": "builtin:tiny", "dataset": "builtin:addition",
        "device": "cpu", "gpus": 1, "cascade": {"mode": "metric"},
        "grpo": {"max_steps": 40, "per_device_train_batch_size": 32, "num_generations": 8, "learning_rate": 0.0002}}


def frame(step: int) -> Frame:
    gate = "B" if step >= 12 else "A"
    return Frame(step=step, phi=0.55 + 0.2 * (1 - math.exp(-step / 15)), entropy=0.9 * math.exp(-step / 30),
                 reward_mean=0.3 + 0.01 * step, task_reward=min(1.0, 0.3 + 0.01 * step),
                 carl_reward=0.62 + 0.002 * step, gate=gate, carl_weight=1.0 if gate == "B" else 0.0,
                 loss=0.01, lr=2e-4, step_time=0.1, timestamp=1_700_000_000.0 + step,
                 sample=f"{10 + step}+{20 + step}={30 + 2 * step}")


# what a worker on a two-GPU machine records in its frames (engine/system.py's shape)
GPU_BOX = {"pid": 4242, "cpu_pct": 101.5, "rss_mb": 3120.0, "ram_used_mb": 40960.0, "ram_total_mb": 131072.0,
           "cpu_count": 16, "gpu_note": None,
           "gpus": [{"index": 0, "name": "NVIDIA H200", "util_pct": 91, "mem_used_mb": 61440.0, "mem_total_mb": 143771.0},
                    {"index": 1, "name": "NVIDIA H200", "util_pct": 88, "mem_used_mb": 60416.0, "mem_total_mb": 143771.0}]}


def make_run(home: Path, run_id: str, steps, *, status: str = "completed", pid: int | None = None,
             system: dict | None = None) -> Path:
    d = home / "runs" / run_id
    d.mkdir(parents=True)
    (d / "plan.json").write_text(json.dumps(PLAN))
    meta = {"run_id": run_id, "status": status, "backend": "local", "pid": pid, "max_steps": 40,
            "started_at": 1_700_000_000.0, "heartbeat": time.time() if pid else 1_700_000_040.0,
            "eval": {"before": {"task_metric": 0.31}, **({"after": {"task_metric": 0.52}} if status == "completed" else {})}}
    (d / "meta.json").write_text(json.dumps(meta))
    with FrameWriter(d / "frames.jsonl") as w:
        for s in steps:
            f = frame(s)
            f.system = system
            w.write(f)
    with open(d / "events.jsonl", "w") as fh:
        fh.write(json.dumps({"name": "eval", "phase": "before", "step": 0, "task_metric": 0.31}) + "\n")
        fh.write(json.dumps({"name": "gate_open", "step": 12, "mode": "metric", "threshold": 0.4}) + "\n")
    (d / "stdout.log").write_text("[12:00:00] run started: device cpu\n[12:00:01] before: held-out exact 0.310\n"
                                  "[12:00:02] gate opened at step 12 (metric): stage B, CARL on\n")
    return d


def make_app(root: Path, **screen_args) -> CarlApp:
    ctx = WorkbenchContext(home=CarlHome(root / "home"), cwd=root, screen_args=screen_args,
                           clock=lambda: 1_700_000_000.0)
    return CarlApp(ctx=ctx, screen="train")


async def settle(pilot, n: int, tries: int = 3000) -> TrainScreen:
    screen = pilot.app.screen
    assert isinstance(screen, TrainScreen)
    for _ in range(tries):
        if len(screen.frames) >= n and screen.plan:
            break
        await pilot.pause(0.02)
    from screens.widgets.charts import MetricChart

    for chart in screen.query(MetricChart):
        chart.flush()
    await pilot.pause()
    assert len(screen.frames) == n
    return screen


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_recorded_run_snapshot(snap_compare, snap_home, snap_env, size):
    make_run(snap_home / "home", "20250101-120000-abcd", range(1, 41))
    app = make_app(snap_home, run="20250101")

    async def run_before(pilot):
        screen = await settle(pilot, 40)
        assert "gate B" in screen.gate_text() and "step 12" in screen.gate_text()

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_recorded_run_with_hardware_snapshot(snap_compare, snap_home, snap_env, size):
    """The hardware line of a finished run: what its last frame recorded, per GPU."""
    make_run(snap_home / "home", "20250101-120000-gpus", range(1, 41), system=GPU_BOX)
    app = make_app(snap_home, run="20250101-120000-gpus")

    async def run_before(pilot):
        screen = await settle(pilot, 40)
        hw = screen.hardware_text()
        assert hw == ("hw at step 40: worker CPU 102%, RSS 3.0 GB · RAM 40/128 GB · GPU0 H200 91% 60/140 GB · "
                      "GPU1 H200 88% 59/140 GB")

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.anyio
async def test_reattaches_to_a_running_run_and_follows_it(tmp_path):
    stand_in = subprocess.Popen(["sleep", "120"])  # a live "worker" process that the stop key may signal
    d = make_run(tmp_path / "home", "20250101-120000-live", range(1, 6), status="running", pid=stand_in.pid)
    app = make_app(tmp_path)  # no --run: the screen finds the live run itself
    try:
        await _follow_and_stop(app, d)
    finally:
        stand_in.kill()
        stand_in.wait()
    assert stand_in.returncode == -15  # the stop key sent SIGTERM to the worker


async def _follow_and_stop(app, d):
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await settle(pilot, 5)
        assert screen.run_id == "20250101-120000-live" and screen.following
        with FrameWriter(d / "frames.jsonl") as w:
            for s in range(6, 11):
                w.write(frame(s))
        for _ in range(1200):
            if len(screen.frames) == 10:
                break
            await pilot.pause(0.05)
        assert [f.step for f in screen.frames] == list(range(1, 11))
        # the live worker's numbers, measured from its process (here the stand-in), and the GPUs or why none
        for _ in range(1200):
            if screen.live_system and screen.live_system.get("cpu_pct") is not None:
                break
            await pilot.pause(0.05)
        hw = screen.hardware_text()
        assert screen.live_system["pid"] == screen.meta["pid"] and hw.startswith("hw: worker CPU ")
        assert " RSS " in hw and ("GPU0 " in hw or "no GPU" in hw)
        await pilot.press("x")  # graceful stop request reaches the run directory
        assert (d / "stop.request").is_file()
        await pilot.press("d")
        assert screen.run_id is None and not screen.following


@pytest.mark.anyio
async def test_y_opens_the_try_screen_on_the_open_run_and_t_always_returns_to_train(tmp_path):
    """`y` opens the try screen (its own mode): `t` goes back to train, also after visiting another screen
    (y, o, t once opened try instead of train, from then on)."""
    from screens.try_panel import TryScreen

    make_run(tmp_path / "home", "20250101-120000-done", range(1, 4))
    app = make_app(tmp_path, run="20250101-120000-done")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, 3)
        await pilot.press("y")
        await pilot.pause()
        assert isinstance(app.screen, TryScreen)
        assert app.screen._init["run"] == "20250101-120000-done"
        for keys, screen in ((("t",), TrainScreen), (("y", "o", "t"), TrainScreen), (("y",), TryScreen)):
            await pilot.press(*keys)
            await pilot.pause()
            assert isinstance(app.screen, screen), keys


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_collapse_onset_banner_snapshot(snap_compare, snap_home, snap_env, size):
    """A run whose worker reported the collapse early warning shows the banner with its step."""
    d = make_run(snap_home / "home", "20250101-120000-dcba", range(1, 41))
    with open(d / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"name": "collapse_onset", "step": 31, "since": 27, "action": "warn",
                             "message": "collapse onset at step 31"}) + "\n")
    app = make_app(snap_home, run="20250101-120000-dcba")

    async def run_before(pilot):
        screen = await settle(pilot, 40)
        for _ in range(400):
            if any(e.get("name") == "collapse_onset" for e in screen.events):
                break
            await pilot.pause(0.02)
        screen.refresh_text()
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)

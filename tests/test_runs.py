"""Worker lifecycle with real worker processes: detach, attach, graceful stop, resume without duplicate frames,
kill -9 → failed on the next look with frames intact, resume again to completion."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from engine.errors import RunNotFound, ValidationError
from engine.frames import read_frames
from engine.runs import RunStore, last_checkpoint, pid_alive
from tests._tiny_fixture import SMALL, tiny_cache, tiny_env  # noqa: F401

pytestmark = pytest.mark.slow


def _wait(pred, timeout=240.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _last_step(store, run_id):
    return RunStore._last_frame_step(store.run_dir(run_id))


def test_lifecycle_detach_attach_stop_resume_kill_resume(tiny_env):
    from engine.config import load_config
    from engine.trainer.plan import plan

    cfg, path = load_config(None, SMALL + ["grpo.max_steps=10", "grpo.save_steps=2", "tracking.trackio=false"])
    store = RunStore()
    run_id = store.create(cfg.to_yaml(), plan(cfg, path))
    d = store.run_dir(run_id)
    pid = store.spawn(run_id)  # detached: the worker is its own process and session
    assert store.show(run_id[:12])["status"] == "running" and os.getpgid(pid) == pid

    # graceful stop once it is training: finishes the step, checkpoints, status stopped
    _wait(lambda: _last_step(store, run_id) >= 2, what="step 2")
    res = store.stop(run_id, wait=120)
    assert res["status"] == "stopped"
    stopped_at = _last_step(store, run_id)
    ck = last_checkpoint(d)
    assert ck is not None and ck[0] == stopped_at and stopped_at < 10
    assert (ck[1] / "carl_cascade.json").is_file()

    # attach replays the whole history then ends with done
    lines = list(store.follow(run_id))
    assert [x["step"] for x in lines if x["type"] == "frame"] == list(range(1, stopped_at + 1))
    done = lines[-1]
    assert {k: done[k] for k in ("type", "run_id", "status", "run_dir")} == \
        {"type": "done", "run_id": run_id, "status": "stopped", "run_dir": str(d)}
    assert "before" in done["eval"]
    assert all(set(("run_id", "step", "phi", "gate", "elapsed_s")) <= set(x) for x in lines if x["type"] == "frame")

    # resume, then kill -9 mid-run: failed on the next look, frames intact
    rid, step = store.prepare_resume(run_id)
    assert step == stopped_at
    pid = store.spawn(run_id, resume=True)
    _wait(lambda: _last_step(store, run_id) >= step + 2, what="frames after resume")
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not pid_alive(pid), timeout=20, what="the worker to die")
    shown = store.show(run_id)
    assert shown["status"] == "failed" and "gone" in shown["error"]
    frames, skipped = read_frames(d / "frames.jsonl")
    assert skipped == 0 and [f.step for f in frames] == list(range(1, len(frames) + 1))
    assert json.loads((d / "meta.json").read_text())["status"] == "failed"  # recorded, not just reported

    # resume again from the newest checkpoint: frames continue without duplicates, run completes
    rid, step2 = store.prepare_resume(run_id)
    assert step2 >= step
    store.spawn(run_id, resume=True)
    tail = list(store.follow(run_id, replay=False))
    assert tail[-1]["type"] == "done" and tail[-1]["status"] == "completed", tail[-1]
    frames, skipped = read_frames(d / "frames.jsonl")
    assert [f.step for f in frames] == list(range(1, 11))
    assert skipped == 0
    assert store.show(run_id)["status"] == "completed"
    with pytest.raises(ValidationError):
        store.prepare_resume(run_id)  # completed runs do not resume


def test_stale_heartbeat_reads_failed_and_prefixes_resolve(monkeypatch):
    store = RunStore()
    a = store.create("{}\n", {})
    b = store.create("{}\n", {})
    from engine.runs import update_meta

    # a live process (this one) with an old heartbeat: reported failed, not rewritten (it might be alive)
    update_meta(store.run_dir(a), status="running", pid=os.getpid(), heartbeat=time.time() - 3600)
    monkeypatch.setenv("CARL_HEARTBEAT_STALE_S", "30")
    assert store.meta(a)["status"] == "failed"
    assert json.loads((store.run_dir(a) / "meta.json").read_text())["status"] == "running"
    assert {r["run_id"] for r in store.list()} == {a, b}
    with pytest.raises(RunNotFound):
        store.resolve("nope")
    if a[:9] == b[:9]:
        with pytest.raises(ValidationError):
            store.resolve(a[:9])
    assert store.resolve(a) == a

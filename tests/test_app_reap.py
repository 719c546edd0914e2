"""Finished workers are collected while the workbench runs (issue 28 §8): a run started from the TUI is a child of
the TUI's process (engine.runs.RunStore.spawn); when it ends it must not stay a zombie until the TUI exits."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from carl_tui.app import CarlApp
from engine.home import CarlHome
from engine.runs import RunStore
from screens.context import WorkbenchContext


def proc_state(pid: int) -> str | None:
    """The kernel's state letter for ``pid`` (``Z`` = zombie), None when the pid is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.fixture
def short_spawn(monkeypatch):
    """RunStore.spawn as the train screen calls it, with a worker command that exits at once."""
    monkeypatch.setattr(RunStore, "_launch_command", lambda self, run_id, **kw: [sys.executable, "-c", "pass"])

    def spawn(home: CarlHome) -> int:
        store = RunStore(home)
        return store.spawn(store.create("project:\n  name: reap\n", {}))

    return spawn


def test_without_collection_the_finished_child_is_a_zombie(short_spawn):
    """The condition the workbench must prevent, seen as the kernel shows it."""
    pid = short_spawn(CarlHome.from_env())
    deadline = time.time() + 60
    while proc_state(pid) != "Z" and time.time() < deadline:
        time.sleep(0.05)
    assert proc_state(pid) == "Z"
    assert pid not in RunStore.reap() and proc_state(pid) is None


@pytest.mark.anyio
async def test_the_workbench_reaps_a_finished_worker_while_it_runs(short_spawn, tmp_path):
    ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=tmp_path)
    app = CarlApp(ctx=ctx, screen="project")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        pid = short_spawn(ctx.home)
        deadline = time.time() + 60
        while proc_state(pid) is not None and time.time() < deadline:
            await pilot.pause(0.1)  # the app keeps running; only its own timer collects the child
        assert proc_state(pid) is None, f"worker {pid} left as {proc_state(pid)!r} while the TUI runs"
        assert pid not in RunStore._procs  # noqa: SLF001
        assert app.is_running

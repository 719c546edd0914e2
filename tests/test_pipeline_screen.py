"""Train screen: the stage line of a `train --send-it` run (recorded run dirs), at 80×24 and 120×40."""

from __future__ import annotations

import json

import pytest

from screens.widgets.stage_line import stage_line
from tests.test_train_screen import SIZES, make_app, make_run, settle

DONE = [{"name": "sft", "status": "done", "key": 0.325, "key_name": "held-out"},
        {"name": "gate", "status": "done", "key": "pass", "key_name": "verdict"},
        {"name": "grpo", "status": "done", "key": 0.52, "key_name": "held-out"},
        {"name": "eval", "status": "done", "key": "pass", "key_name": "verdict"},
        {"name": "push", "status": "done", "key": "3f9c2a71d0e4b5a6c7d8e9f00112233445566778", "key_name": "revision"}]
STOPPED = [dict(DONE[0]), dict(DONE[1]), {"name": "grpo", "status": "stopped", "key": None, "key_name": "held-out"},
           {"name": "eval", "status": "waiting", "key": None, "key_name": "verdict"},
           {"name": "push", "status": "waiting", "key": None, "key_name": "revision"}]


def pipeline_run(home, run_id, stages, status):
    d = make_run(home, run_id, range(1, 41) if status == "completed" else range(1, 21), status=status)
    meta = json.loads((d / "meta.json").read_text())
    meta["pipeline"] = stages
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def test_stage_line_text():
    assert stage_line(None) == "" and stage_line([]) == ""
    text = stage_line(DONE)
    assert text.startswith("stages: sft [green]✓[/] 0.325") and "push [green]✓[/] 3f9c2a71d0" in text
    assert "grpo [yellow]■[/]" in stage_line(STOPPED) and "eval [dim]·[/]" in stage_line(STOPPED)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pipeline_run_done_snapshot(snap_compare, snap_home, snap_env, size):
    pipeline_run(snap_home / "home", "20250101-120000-pipe", DONE, "completed")
    app = make_app(snap_home, run="20250101-120000-pipe")

    async def run_before(pilot):
        screen = await settle(pilot, 40)
        line = screen.query_one("#stages")
        assert line.display and "push" in str(line.render())

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pipeline_run_stopped_in_grpo_snapshot(snap_compare, snap_home, snap_env, size):
    pipeline_run(snap_home / "home", "20250101-120000-stop", STOPPED, "stopped")
    app = make_app(snap_home, run="20250101-120000-stop")

    async def run_before(pilot):
        screen = await settle(pilot, 20)
        assert screen.query_one("#stages").display

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_a_plain_run_has_no_stage_line(tmp_path):
    import asyncio

    make_run(tmp_path / "home", "20250101-120000-abcd", range(1, 4))

    async def go():
        app = make_app(tmp_path, run="20250101-120000-abcd")
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot, 3)
            assert not pilot.app.screen.query_one("#stages").display

    asyncio.run(go())

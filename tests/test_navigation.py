"""Navigation across the workbench, driven by keys only: every screen names itself in the header, its own keys
show in the footer at 80 columns, `?` lists every key, Esc leaves any text input, observe's picker goes ↓ into
the recent runs; snapshots of the help screen and of the picker (80×24 and 120×40)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carl_tui.app import SCREENS, CarlApp
from engine.frames import FrameWriter
from engine.home import CarlHome
from screens.context import WorkbenchContext

SIZES = [(80, 24), (120, 40)]


def make_app(root: Path, screen: str, **screen_args) -> CarlApp:
    ctx = WorkbenchContext(home=CarlHome(root / "home"), cwd=root, screen_args=screen_args,
                           clock=lambda: 1_700_000_000.0)
    return CarlApp(ctx=ctx, screen=screen)


def rows(app) -> list[str]:
    return [s.text for s in app.screen._compositor.render_strips()]


async def until(pilot, cond, limit: int = 3000):
    for _ in range(limit):
        if cond():
            return
        await pilot.pause(0.02)
    raise AssertionError("condition not reached")


def own_footer_entries(app) -> list[str]:
    """'key Description' for every binding the footer should show that is not the shell's (the screen's and
    the focused widget's own keys)."""
    seen, out = set(), []
    for key, active in app.screen.active_bindings.items():
        b = active.binding
        if not b.show or active.node is app or b.action in seen:
            continue
        seen.add(b.action)
        out.append(f"{app.get_key_display(b)} {b.description}")
    return out


def write_run(home: Path, run_id: str, n: int = 5) -> None:
    d = home / "runs" / run_id
    with FrameWriter(d / "frames.jsonl") as w:
        for s in range(n):
            w.write({"step": s, "phi": 0.1, "entropy": 1.0, "timestamp": 1_700_000_000.0 + s})
    (d / "meta.json").write_text(json.dumps({"run_id": run_id, "status": "completed",
                                              "started_at": 1_700_000_000.0}))


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(SCREENS))
async def test_every_screen_names_itself_and_its_keys_fit_the_footer_at_80_columns(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    app = make_app(tmp_path, name)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert f"carl · {name} — " in rows(app)[0]
        for left_input in (False, True):  # as it opens, then after one Esc has left any focused text input
            await pilot.pause()
            expected = own_footer_entries(app) + (["? Help"] if left_input else [])
            await until(pilot, lambda: all(e in rows(app)[-1] for e in expected))
            if not left_input:
                await pilot.press("escape")
        assert app.screen.__class__.__name__ == SCREENS[name][1]  # Esc never leaves the screen


@pytest.mark.anyio
async def test_question_mark_lists_the_screens_keys_and_every_screen_switch(tmp_path):
    app = make_app(tmp_path, "train")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        from screens.help import HelpScreen

        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = "\n".join(rows(app))
        for word in ("This screen (train)", "Start", "Detach", "Try it", "Screens", "Everywhere"):
            assert word in text, word
        for name, (_, _, key, _) in SCREENS.items():
            assert f"{key}  {name}" in text, name
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        assert app.current_mode == "train"
        await pilot.press("o")  # screen keys work as before
        await until(pilot, lambda: app.current_mode == "observe")


@pytest.mark.anyio
async def test_palette_lists_screens_and_keys(tmp_path):
    app = make_app(tmp_path, "train")
    async with app.run_test(size=(80, 24)):
        titles = [c.title for c in app.get_system_commands(app.screen)]
    for name, (_, _, key, _) in SCREENS.items():
        assert f"Open {name} screen ({key})" in titles
    assert "Keys (?)" in titles


@pytest.mark.anyio
async def test_escape_leaves_any_text_input(tmp_path, monkeypatch):
    """On every screen that opens with a text input focused, Esc leaves it and a screen key then works."""
    from textual.widgets import Input

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    for name in ("observe", "chat", "probe", "try"):
        app = make_app(tmp_path, name)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert not isinstance(app.focused, Input), name  # no screen opens inside a text input
            await pilot.press("slash")  # the user enters it on purpose
            await until(pilot, lambda: isinstance(app.focused, Input))
            await pilot.press("escape")
            assert not isinstance(app.focused, Input), name
            await pilot.press("l")
            await until(pilot, lambda: app.current_mode == "ledger")


@pytest.mark.anyio
async def test_observe_picker_down_into_the_runs_and_enter_opens(tmp_path):
    write_run(tmp_path / "home", "20250101-000000-aaaa")
    write_run(tmp_path / "home", "20250102-000000-bbbb", n=7)
    app = make_app(tmp_path, "observe")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await until(pilot, lambda: app.focused is not None and app.focused.id == "obs-runs")  # never the box
        await pilot.press("slash")
        await until(pilot, lambda: app.focused is not None and app.focused.id == "obs-spec")
        await pilot.press("down")  # from the source box into the recent runs
        runs = screen.query_one("#obs-runs")
        assert app.focused is runs and runs.highlighted == 0
        await pilot.press("down", "enter")  # the second run in the list
        second = runs.get_option_at_index(1).id
        await until(pilot, lambda: screen.source is not None and not screen.loading and screen.summary_current)
        assert screen.source.run == second and screen.query_one("#obs-tabs").active == "charts"


@pytest.mark.anyio
async def test_enter_on_an_empty_source_box_opens_the_highlighted_run(tmp_path):
    write_run(tmp_path / "home", "20250101-000000-only", n=3)
    app = make_app(tmp_path, "observe")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await pilot.press("slash")
        await until(pilot, lambda: app.focused is not None and app.focused.id == "obs-spec")
        await pilot.press("enter")
        await until(pilot, lambda: screen.source is not None and len(screen.frames) == 3 and screen.summary_current)
        assert screen.source.run == "20250101-000000-only" and screen.error is None


@pytest.mark.anyio
async def test_enter_on_an_empty_source_box_without_runs_says_so(tmp_path):
    app = make_app(tmp_path, "observe")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await pilot.press("slash")
        await until(pilot, lambda: app.focused is not None and app.focused.id == "obs-spec")
        await pilot.press("enter")
        await until(pilot, lambda: screen.error is not None)
        assert screen.source is None
        await pilot.press("down")  # no runs to go down to: at least the box is left, screen keys work
        assert app.focused is None


# ------------------------------------------------------------------------------------------------ snapshots
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_help_over_train_snapshot(snap_compare, snap_home, snap_env, size):
    from tests.test_train_screen import make_run as make_train_run

    make_train_run(snap_home / "home", "20250101-120000-abcd", range(1, 41))  # recorded: nothing live behind
    app = make_app(snap_home, "train", run="20250101-120000-abcd")
    assert snap_compare(app, press=["question_mark"], terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_observe_picker_in_the_runs_list_snapshot(snap_compare, snap_home, snap_env, size):
    write_run(snap_home / "home", "20250101-000000-aaaa")
    write_run(snap_home / "home", "20250102-000000-bbbb")

    async def run_before(pilot):
        # the picker opens in the runs list on the newest run (no text box focused): one down to the older run
        await until(pilot, lambda: pilot.app.focused is not None and pilot.app.focused.id == "obs-runs"
                    and pilot.app.focused.option_count == 2)
        await pilot.press("down")
        await pilot.pause()

    assert snap_compare(make_app(snap_home, "observe"), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_observe_empty_source_snapshot(snap_compare, snap_home, snap_env, size):
    foreign = snap_home / "passwd"
    foreign.write_text("".join(f"user{i}:x:{1000 + i}:{1000 + i}::/home/user{i}:/bin/sh\n" for i in range(24)))

    async def run_before(pilot):
        screen = pilot.app.screen
        await until(pilot, lambda: not screen.loading and screen.summary_current)
        screen.flush()
        await pilot.press("2")  # the health tab says why
        await pilot.pause()

    app = make_app(snap_home, "observe", file=str(foreign), no_follow=True)
    assert snap_compare(app, terminal_size=size, run_before=run_before)

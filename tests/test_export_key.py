"""`E` on the observe and train screens writes what `carl --batch observe --export DIR` writes (frames.csv and
the PNG charts) for the frames on screen, under CARL_HOME/exports/, and a notification says where."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests import test_observe_screen as obs
from tests import test_train_screen as trn

RUN = "20250101-120000-export"


def exported(home: Path) -> Path:
    dirs = sorted((home / "exports").iterdir())
    assert len(dirs) == 1
    return dirs[0]


def notes(app) -> str:
    return " ".join(n.message for n in app._notifications)  # noqa: SLF001


@pytest.mark.anyio
async def test_E_on_observe_exports_the_frames_like_observe_export(tmp_path):
    obs.make_run(tmp_path / "home", RUN, range(1, 21), status="completed")
    app = obs.make_app(tmp_path, run=RUN, no_follow=True)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await obs.settle(pilot, 20)
        await pilot.press("E")  # the key a terminal sends for shift+e
        out = tmp_path / "home" / "exports"
        for _ in range(1500):
            await pilot.pause(0.02)
            if out.is_dir() and any(out.iterdir()) and "exported" in notes(app):
                break
        d = exported(tmp_path / "home")
        assert d.name.startswith(RUN) and str(d) in notes(app)
        rows = list(csv.DictReader((d / "frames.csv").open()))
        assert [int(r["step"]) for r in rows] == [f.step for f in screen.frames]
        assert (d / "phi.png").is_file()


@pytest.mark.anyio
async def test_E_on_train_exports_the_attached_runs_frames(tmp_path):
    trn.make_run(tmp_path / "home", RUN, range(1, 11))
    app = trn.make_app(tmp_path, run=RUN)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await trn.settle(pilot, 10)
        await pilot.press("E")
        out = tmp_path / "home" / "exports"
        for _ in range(1500):
            await pilot.pause(0.02)
            if out.is_dir() and any(out.iterdir()) and "exported" in notes(app):
                break
        d = exported(tmp_path / "home")
        assert d.name.startswith(RUN) and "exported 10 frames" in notes(app)
        assert [int(r["step"]) for r in csv.DictReader((d / "frames.csv").open())] == [f.step for f in screen.frames]


@pytest.mark.anyio
async def test_E_with_nothing_on_screen_says_so(tmp_path):
    app = obs.make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("E")
        await pilot.pause()
        assert "Nothing to export yet" in notes(app)
        assert not (tmp_path / "home" / "exports").exists()

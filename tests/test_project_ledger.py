"""Project actions are ledger blocks: `project init` (batch) and a save on the project screen."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.config import changed_fields
from engine.home import CarlHome
from tests.conftest import REPO


def _read_segments(home) -> list[dict]:
    out = []
    for seg in sorted((home / "ledger").glob("*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines() if line.strip()]
    return out


def test_changed_fields_names_dotted_paths():
    a = {"grpo": {"max_steps": 60, "seed": 0}, "project": {"name": "x"}}
    b = {"grpo": {"max_steps": 80, "seed": 0}, "project": {"name": "y"}, "lora": {"enabled": True}}
    assert changed_fields(a, b) == ["grpo.max_steps", "lora", "project.name"]
    assert changed_fields(a, a) == []


def test_project_init_is_recorded_and_verifies(tmp_path, _isolated_home):
    env = {**__import__("os").environ, "CARL_HOME": str(_isolated_home)}
    out = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", "project", "init", "--dir", str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    blocks = _read_segments(_isolated_home)
    inits = [b for b in blocks if b["action"] == "project.init"]
    assert len(inits) == 1
    assert inits[0]["payload"]["preset"] == "tiny-cpu"
    assert len(inits[0]["payload"]["config_hash"]) == 64
    ver = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", "ledger", "verify"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert ver.returncode == 0 and json.loads(ver.stdout)["ok"] is True


@pytest.mark.anyio
async def test_project_screen_save_records_the_changed_fields(tmp_path, _isolated_home):
    from pathlib import Path

    from carl_tui.app import CarlApp
    from engine.config import Config, save_config
    from engine.ledger import record_nowait
    from screens.context import WorkbenchContext

    save_config(Config(), tmp_path / "carl.yaml")
    ctx = WorkbenchContext(home=CarlHome(Path(_isolated_home)), cwd=tmp_path)
    app = CarlApp(ctx=ctx, screen="project")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        screen._data["grpo"]["max_steps"] = 77  # what an edit of the max_steps field leaves behind
        screen._config = Config.model_validate(screen._data)
        await pilot.press("ctrl+s")
        await pilot.pause()
    record_nowait("noop.flush", {}).result(timeout=30)  # the writer thread is FIFO: earlier blocks are on disk
    changes = [b for b in _read_segments(_isolated_home) if b["action"] == "project.change"]
    assert len(changes) == 1
    assert changes[0]["payload"]["changed"] == ["grpo.max_steps"]


@pytest.mark.anyio
async def test_a_failed_ledger_write_from_the_workbench_is_shown(tmp_path):
    """The project screen's write goes to the background writer; when it fails (here: CARL_HOME's ledger path is
    a file) the screen notifies and the ledger screen's status names the action that was not recorded."""
    from pathlib import Path

    from carl_tui.app import CarlApp
    from engine.config import Config, save_config
    from engine.ledger import write_failures
    from screens.context import WorkbenchContext

    broken = CarlHome(Path(tmp_path / "broken-home"))
    broken.root.mkdir()
    (broken.root / "ledger").write_text("not a directory")
    save_config(Config(), tmp_path / "carl.yaml")
    ctx = WorkbenchContext(home=broken, cwd=tmp_path)
    app = CarlApp(ctx=ctx, screen="project")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        screen._data["grpo"]["max_steps"] = 78
        screen._config = Config.model_validate(screen._data)
        await pilot.press("ctrl+s")
        for _ in range(600):  # the done-callback posts a message; wait for it to be shown
            if any("not recorded" in (n.title or "") for n in app._notifications):
                break
            await pilot.pause(0.05)
        titles = [n.title for n in app._notifications]
        assert "project.change not recorded in the ledger" in titles
        assert [f["action"] for f in write_failures(broken)][:1] == ["project.change"]
        from screens.ledger import LedgerScreen

        ledger = LedgerScreen()
        await app.push_screen(ledger)
        for _ in range(200):
            if ledger.loaded:
                break
            await pilot.pause(0.05)
        verdict = str(ledger.query_one("#ledger-verdict").render())
        assert "1 action not recorded" in verdict and "project.change" in verdict
        assert "Not a directory" in verdict  # and the unreadable ledger is said, not a traceback

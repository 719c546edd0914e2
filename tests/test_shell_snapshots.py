"""Snapshots of the workbench shell on the project screen (pytest-textual-snapshot), driven by keys only.

Deterministic: fixed CARL_HOME and cwd (snap_home), no animations (snap_env), no cursor blink, frozen clock.
Only the project screen, its header/footer and the command palette over it are snapshotted: the other screens'
bodies belong to their own issues and tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from carl_tui.app import CarlApp
from engine.config import preset, save_config
from engine.home import CarlHome
from screens.context import WorkbenchContext

SIZES = [(80, 24), (120, 40)]


def make_app(root: Path, screen: str = "project") -> CarlApp:
    ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=root, clock=lambda: 1_700_000_000.0)
    return CarlApp(ctx=ctx, screen=screen)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_project_offers_presets_without_carl_yaml(snap_compare, snap_home, snap_env, size):
    assert snap_compare(make_app(snap_home), terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_project_shows_carl_yaml_form(snap_compare, snap_home, snap_env, size):
    save_config(preset("lora-7b"), snap_home / "carl.yaml")
    assert snap_compare(make_app(snap_home), terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_project_invalid_edit_shows_field_error(snap_compare, snap_home, snap_env, size):
    save_config(preset("tiny-cpu"), snap_home / "carl.yaml")
    # project.name → model → dataset → max_steps → learning_rate → batch_size; "32" → "30"
    keys = ["tab"] * 5 + ["end", "backspace", "0"]
    assert snap_compare(make_app(snap_home), press=keys, terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_command_palette_over_project(snap_compare, snap_home, snap_env, size):
    save_config(preset("tiny-cpu"), snap_home / "carl.yaml")
    assert snap_compare(make_app(snap_home), press=["escape", "ctrl+p", "o", "p", "e", "n"], terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_created_from_preset_by_keys(snap_compare, snap_home, snap_env, size):
    """Down + Enter on the preset list writes carl.yaml and shows the form (header names the project)."""
    assert snap_compare(make_app(snap_home), press=["down", "enter"], terminal_size=size)
    assert (snap_home / "carl.yaml").is_file()

"""`python3 -m carl_tui.bootstrap run` from a clone's root opens the demo outside the source tree (issue 28 §11)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from carl_tui import bootstrap


def test_from_the_source_tree_the_workbench_opens_on_the_demo_under_carl_home(tmp_path):
    assert bootstrap.is_source_tree(bootstrap.ROOT)
    cwd, args = bootstrap.run_target([], bootstrap.ROOT)
    assert cwd == Path(os.environ["CARL_HOME"]) / "demo" and args == ["train"]
    assert not bootstrap.is_source_tree(cwd)
    # arguments pass through; only the directory moves out of the source tree
    assert bootstrap.run_target(["observe", "--run", "X"], bootstrap.ROOT) == (cwd, ["observe", "--run", "X"])


def test_a_copy_of_the_tree_counts_and_a_project_directory_does_not(tmp_path):
    clone = tmp_path / "clone"
    (clone / "carl_tui").mkdir(parents=True)
    (clone / "engine").mkdir()
    shutil.copy(bootstrap.ROOT / "carl_tui" / "bootstrap.py", clone / "carl_tui" / "bootstrap.py")
    (clone / "pyproject.toml").write_text("[project]\nname = 'carl'\n")
    assert bootstrap.is_source_tree(clone) and bootstrap.run_target([], clone)[0] != clone
    project = tmp_path / "my-project"
    project.mkdir()
    (project / "carl.yaml").write_text("project:\n  name: mine\n")
    assert bootstrap.run_target([], project) == (project, [])

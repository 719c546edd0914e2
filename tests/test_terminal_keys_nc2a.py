"""Real-terminal checks (tmux, keys as a user types them) for the keys issue 28's second part added: `E` export on
observe and train, the probe's boxes (`/`, Tab, Enter measures and leaves the box), `P` on try. Same harness and
seeded run as tests/test_terminal.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests._tmux import TMUX
from tests.test_terminal import RUN, on_screen, start, tmux, workdir  # noqa: F401 — fixtures

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


@pytest.mark.parametrize("screen,width,height,no_color", [("observe", 80, 24, True), ("train", 120, 40, False)])
def test_E_exports_the_frames_on_screen(tmux, workdir, screen, width, height, no_color):  # noqa: F811
    pane = start(tmux, workdir, width, height, no_color, screen, "--run", RUN)
    try:
        pane.wait(RUN, what="the run")
        pane.send("E")
        pane.wait("exported 30", what="the export notification")
        dirs = list((workdir / "home" / "exports").iterdir())
        assert len(dirs) == 1 and dirs[0].name.startswith(RUN) and (dirs[0] / "frames.csv").is_file()
        pane.send("t" if screen == "observe" else "o")  # screen keys still switch screens
        on_screen(pane, "train" if screen == "observe" else "observe")
    finally:
        pane.kill()


def test_probe_enter_measures_and_leaves_the_box(tmux, workdir):  # noqa: F811
    rng = np.random.default_rng(0)
    np.save(workdir / "proj" / "logits.npy", rng.standard_normal((12, 16)).astype(np.float32))
    pane = start(tmux, workdir, 80, 24, True, "probe")
    try:
        pane.send("/")
        pane.stable()
        pane.type("logits.npy")
        pane.send("Enter")
        pane.wait("✓ logits.npy: 12 tokens", what="the measured file")
        pane.send("t")  # Enter left the box: `t` is train, not a letter in the path
        on_screen(pane, "train")
    finally:
        pane.kill()


def test_P_on_try_without_a_completion_says_so(tmux, workdir):  # noqa: F811
    pane = start(tmux, workdir, 120, 40, False, "try")
    try:
        pane.send("P")
        pane.wait("Nothing to probe yet", what="the try status line")
    finally:
        pane.kill()

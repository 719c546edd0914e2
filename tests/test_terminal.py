"""The workbench in a real terminal: `carl` in tmux at 80×24 and 120×40, NO_COLOR and colour, a fresh CARL_HOME
with one finished run written directly (no training), keys sent with `tmux send-keys` exactly as a user types
them, assertions on `capture-pane`.

What this suite is for (snapshot tests cover layout): every footer key does what its label says, `t o c l b j y p`
switch screens in any order, and a screen key typed while no input has focus never edits an input.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from engine.frames import Frame, FrameWriter
from tests._tmux import TMUX, TmuxServer, carl_argv

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")

SCREEN_KEYS = {"p": "project", "t": "train", "o": "observe", "c": "chat", "l": "ledger", "b": "probe", "j": "jobs",
               "y": "try"}
RUN = "20250101-120000-demo"
COMBOS = [(80, 24, True), (120, 40, False)]  # (width, height, NO_COLOR)
COMBO_IDS = ["80x24-nocolor", "120x40-colour"]


@pytest.fixture(scope="module")
def tmux():
    server = TmuxServer()
    yield server
    server.kill()


def seed_run(home: Path, run_id: str = RUN, steps: int = 30) -> Path:
    """A finished demo-like run, written as the worker writes it (frames, meta, events, log)."""
    d = home / "runs" / run_id
    d.mkdir(parents=True)
    with FrameWriter(d / "frames.jsonl") as w:
        for s in range(1, steps + 1):
            phi = 0.2 + 0.5 * s / steps
            w.write(Frame(step=s, timestamp=1_700_000_000.0 + s, phi=phi, entropy=2.0 - phi,
                          task_reward=0.3 + 0.4 * s / steps, carl_reward=0.5, loss=0.1, kl=0.01 * s,
                          gate="B" if s > 10 else "A"))
    (d / "meta.json").write_text(json.dumps({
        "run_id": run_id, "status": "completed", "backend": "local", "pid": None, "max_steps": steps,
        "started_at": 1_700_000_000.0, "ended_at": 1_700_000_000.0 + steps, "heartbeat": 1_700_000_000.0 + steps,
        "eval": {"before": {"task_metric": 0.33}, "after": {"task_metric": 0.52}}}))
    (d / "events.jsonl").write_text(json.dumps({"name": "gate_open", "step": 10, "mode": "metric"}) + "\n")
    (d / "stdout.log").write_text("[12:00:00] run started: device cpu\n[12:00:30] run completed\n")
    (d / "config.yaml").write_text("grpo:\n  max_steps: 30\n")
    return d


@pytest.fixture
def workdir(tmp_path):
    """A fresh CARL_HOME with one finished run, and an empty project directory (the demo: no carl.yaml)."""
    seed_run(tmp_path / "home")
    (tmp_path / "proj").mkdir()
    return tmp_path


def start(tmux, workdir, width: int, height: int, no_color: bool, *args: str):
    env = {"CARL_HOME": str(workdir / "home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if no_color:
        env["NO_COLOR"] = "1"
    pane = tmux.start(carl_argv(*args), width=width, height=height, env=env, cwd=workdir / "proj")
    first = args[0] if args else "project"
    # readiness: the header names the screen and the footer is drawn (the screen is mounted and takes keys)
    pane.wait(lambda s: f"carl · {first}" in s and "CARL_HOME" in s and "palette" in footer(s), timeout=60,
              what=f"the {first} screen")
    pane.stable(settle=0.2)
    return pane


def on_screen(pane, name: str, timeout: float = 20.0) -> str:
    return pane.wait(lambda s: f"carl · {name} " in s.splitlines()[0] + " ", timeout=timeout,
                     what=f"the header naming {name}")


def footer(screen: str) -> str:
    return screen.rstrip("\n").splitlines()[-1]


# ---------------------------------------------------------------------------------------------- navigation
@pytest.mark.parametrize("width,height,no_color", COMBOS, ids=COMBO_IDS)
def test_screen_keys_switch_screens_in_any_order(tmux, workdir, width, height, no_color):
    """Every ordered pair of screens: the key of the second, pressed on the first, opens it (64 moves)."""
    pane = start(tmux, workdir, width, height, no_color)
    try:
        keys = list(SCREEN_KEYS)
        # a walk that makes every ordered pair (a, b), a ≠ b, a move: for each a, visit every b and come back
        walk = []
        for a in keys:
            for b in keys:
                if a != b:
                    walk += [a, b]
        for key in walk:
            pane.send(key)
            on_screen(pane, SCREEN_KEYS[key])
    finally:
        pane.kill()


@pytest.mark.parametrize("width,height,no_color", COMBOS, ids=COMBO_IDS)
def test_train_y_then_another_screen_then_t_is_train(tmux, workdir, width, height, no_color):
    """`y` on train opens try on the run; from any screen, `t` is train again (it used to reopen try)."""
    pane = start(tmux, workdir, width, height, no_color, "train", "--run", RUN)
    try:
        pane.wait(RUN, what="the attached run")
        for other in "oclbjp":
            pane.send("y")
            on_screen(pane, "try")
            pane.send(other)
            on_screen(pane, SCREEN_KEYS[other])
            pane.send("t")
            on_screen(pane, "train")
    finally:
        pane.kill()


# ---------------------------------------------------------------------------------------------- focus
def box_line(screen: str, marker: str) -> str:
    return next((line for line in screen.splitlines() if marker in line), "")


@pytest.mark.parametrize("width,height,no_color", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("name", ["observe", "chat", "try", "probe", "ledger", "project"])
def test_a_screen_key_never_types_into_an_input_the_user_did_not_enter(tmux, workdir, name, width, height,
                                                                       no_color):
    """Arrive on a screen with a text input, press screen keys: they switch screens; coming back, no input
    holds the letters. Then enter the input on purpose: letters are typed; Esc leaves it and keys work again."""
    pane = start(tmux, workdir, width, height, no_color, name)
    try:
        for key in "ytoq"[:3]:  # three screen keys in a row, none of them this screen's own
            target = SCREEN_KEYS[key] if key != "q" else None
            if target == name:
                continue
            pane.send(key)
            on_screen(pane, target)
            pane.send({v: k for k, v in SCREEN_KEYS.items()}[name])
            screen = on_screen(pane, name)
        screen = pane.stable()
        # an input box's text row is `▊  TEXT  ▎`: none holds the keys pressed (each key switched screens above)
        assert not re.search(r"▊\s+[ytoq]+\s+▎", screen), f"screen keys were typed into an input:\n{screen}"
    finally:
        pane.kill()


@pytest.mark.parametrize("width,height,no_color", COMBOS[:1], ids=COMBO_IDS[:1])
def test_observe_source_tab_then_screen_keys(tmux, workdir, width, height, no_color):
    """`4` (or `s`) opens the Source tab with the recent-runs list focused: `t` is train, not a letter in the
    source box; `/` enters the box, letters are typed, Esc leaves it and `t` is train again."""
    pane = start(tmux, workdir, width, height, no_color, "observe", "--run", RUN)
    try:
        pane.wait(RUN)
        for tab in ("4", "s"):
            pane.send(tab)
            pane.wait("Recent runs", what="the Source tab")
            pane.send("t")
            on_screen(pane, "train")
            pane.send("o")
            on_screen(pane, "observe")
        pane.send("4")
        pane.wait("Recent runs")
        pane.send("/")
        pane.stable()  # Textual moves focus after the key's handler returns: let it land before typing
        pane.type("xyz")
        pane.wait("xyz", what="letters typed into the entered box")
        pane.send("Escape")
        pane.stable()
        pane.send("t")
        on_screen(pane, "train")
    finally:
        pane.kill()


# ---------------------------------------------------------------------------------------------- footer keys
def press_and_see(pane, key: str, predicate, what: str, literal: bool = False) -> str:
    (pane.type if literal else pane.send)(key)
    return pane.wait(predicate, what=f"{key}: {what}")


@pytest.mark.parametrize("width,height,no_color", COMBOS, ids=COMBO_IDS)
def test_observe_footer_and_shifted_keys(tmux, workdir, width, height, no_color):
    """Observe's keys as a terminal sends them: m / M (a capital, never `shift+m`), L for log-y, x, e, f, the
    tab digits."""
    pane = start(tmux, workdir, width, height, no_color, "observe", "--run", RUN)
    try:
        screen = pane.wait(RUN)
        for label in ("Follow", "Metric", "Reload", "EMA", "Source"):
            assert label in footer(screen), (label, footer(screen))
        pane.send("x")
        pane.wait("x wall s", what="x switches the x-axis to wall seconds")
        pane.send("L")
        pane.wait("log y", what="L (capital) turns on log-y")
        pane.send("L")
        pane.wait(lambda s: "log y" not in s, what="L again turns it off")
        pane.send("x")
        pane.wait(lambda s: "x wall s" not in s)
        before = pane.stable()
        pane.send("m")
        after_m = pane.wait(lambda s: s != before, what="m changes the metric chart")
        pane.send("M")
        pane.wait(lambda s: s == before or s != after_m, what="M goes back to the previous metric")
        pane.send("e")
        pane.wait("EMA", what="e sets an EMA")
        pane.send("2")
        pane.wait(lambda s: "Health" in s, what="2 Health")
        pane.send("1")
        pane.wait(lambda s: "Φ" in s)
    finally:
        pane.kill()


@pytest.mark.parametrize("width,height,no_color", COMBOS[:1], ids=COMBO_IDS[:1])
def test_train_footer_keys(tmux, workdir, width, height, no_color):
    pane = start(tmux, workdir, width, height, no_color, "train")
    try:
        screen = pane.stable()
        for label in ("Start", "Stop", "Detach", "Attach", "Resume", "Try it"):
            assert label in footer(screen), (label, footer(screen))
        pane.send("a")
        pane.wait(RUN, what="a attaches the newest run")
        pane.send("x")
        pane.wait(lambda s: "not running" in s or "already" in s or "completed" in s, what="x on a finished run")
        pane.send("d")
        pane.wait(lambda s: RUN not in s.splitlines()[1] if len(s.splitlines()) > 1 else True, what="d detaches")
        pane.send("a")
        pane.wait(RUN)
        pane.send("y")
        on_screen(pane, "try")
    finally:
        pane.kill()


@pytest.mark.parametrize("width,height,no_color", COMBOS[:1], ids=COMBO_IDS[:1])
def test_try_footer_keys(tmux, workdir, width, height, no_color):
    pane = start(tmux, workdir, width, height, no_color, "try")
    try:
        screen = pane.stable()
        assert "/ to type a prompt" in screen or "No model yet" in screen
        for label in ("Model", "Compare", "Sampling"):
            assert label in footer(screen), (label, footer(screen))
        pane.send("g")
        pane.wait("sampling T", what="g switches to sampling")
        pane.send("g")
        pane.wait("greedy", what="g switches back to greedy")
        pane.send("m")
        pane.wait("Model A", what="m opens the model box")
        pane.type("tx")  # typed into the box the user entered
        pane.wait("tx")
        pane.send("Escape")
        pane.wait(lambda s: "Model A" not in s, what="Esc closes the model box")
        pane.send("v")
        pane.wait(lambda s: "Compare " in box_line(s, "second model"), what="v opens the compare box")
        pane.send("Escape")
        pane.wait(lambda s: "second model" not in s, what="Esc closes the compare box")
        pane.send("/")
        pane.stable()
        pane.type("12")
        pane.wait(lambda s: "12" in box_line(s, "Prompt"), what="/ enters the prompt box")
        pane.send("Escape")
        pane.stable()
        pane.send("o")
        on_screen(pane, "observe")
    finally:
        pane.kill()


@pytest.mark.parametrize("width,height,no_color", COMBOS[:1], ids=COMBO_IDS[:1])
def test_help_and_quit(tmux, workdir, width, height, no_color):
    pane = start(tmux, workdir, width, height, no_color, "ledger")
    try:
        pane.send("?")
        pane.wait("This screen (ledger)", what="? opens the keys")
        pane.send("Escape")
        on_screen(pane, "ledger")
        pane.send("v")
        pane.wait(lambda s: "verif" in s.lower(), what="v verifies the ledger")
        pane.send("q")
        pane.wait("[carl exited] 0", what="q quits with exit status 0")
    finally:
        pane.kill()


@pytest.mark.parametrize("width,height,no_color", COMBOS[:1], ids=COMBO_IDS[:1])
def test_train_plan_line_follows_a_saved_project(tmux, workdir, width, height, no_color):
    """The plan line is read again when train shows (it kept the old max_steps after a save)."""
    pane = start(tmux, workdir, width, height, no_color, "train")
    try:
        pane.wait("60 steps", what="the demo's plan")
        pane.send("p")
        on_screen(pane, "project")
        (workdir / "proj" / "carl.yaml").write_text("grpo:\n  max_steps: 7\n")
        pane.send("t")
        pane.wait("7 steps", what="the saved project's plan")
    finally:
        pane.kill()


@pytest.mark.parametrize("width,height,no_color", COMBOS[:1], ids=COMBO_IDS[:1])
def test_quitting_with_a_live_run_names_it_and_the_attach_command(tmux, workdir, width, height, no_color):
    """Runs outlive the workbench: quitting says which are still running and how to get back to them."""
    import subprocess

    worker = subprocess.Popen(["sleep", "120"])  # stands in for a live worker: a live pid and a fresh heartbeat
    try:
        d = seed_run(workdir / "home", "20250101-130000-live", steps=3)
        meta = json.loads((d / "meta.json").read_text())
        meta.update(status="running", pid=worker.pid, heartbeat=time.time(), ended_at=None)
        (d / "meta.json").write_text(json.dumps(meta))
        pane = start(tmux, workdir, width, height, no_color, "ledger")
        try:
            pane.send("q")
            screen = pane.wait("[carl exited] 0", what="carl quits")
            flat = screen.replace("\n", "")
            assert "1 run still running (20250101-130000-live)" in flat
            assert "carl train --run 20250101-130000-live" in flat
        finally:
            pane.kill()
    finally:
        worker.kill()
        worker.wait()


@pytest.mark.parametrize("width,height,no_color", [(120, 40, True)], ids=["120x40-nocolor"])
def test_project_switches_say_on_or_off_in_words(tmux, workdir, width, height, no_color):
    """Under NO_COLOR a switch alone looks the same on and off: each says ON or OFF beside it."""
    (workdir / "proj" / "carl.yaml").write_text("lora:\n  enabled: false\n")
    pane = start(tmux, workdir, width, height, no_color, "project")
    try:
        screen = pane.wait(lambda s: "OFF" in box_line(s, "LoRA") or "OFF" in box_line(s, "lora"),
                           what="the LoRA switch says OFF")
        assert "ON" in screen  # the CARL reward is on by default
    finally:
        pane.kill()


@pytest.mark.parametrize("width,height,no_color", [(80, 24, True)], ids=["80x24-nocolor"])
def test_train_charts_read_at_80x24_without_colour(tmux, workdir, width, height, no_color):
    """At 80×24 under NO_COLOR: every chart keeps a title, task and CARL have different legend glyphs, the x
    ticks are whole steps ending at the last step (30), and the header is one line per item."""
    pane = start(tmux, workdir, width, height, no_color, "train", "--run", RUN)
    try:
        screen = pane.wait(lambda s: " CARL" in s and "phase " in s, what="the charts and the phase line")
        screen = pane.stable(settle=0.3)
        lines = screen.splitlines()
        assert any("Φ" in ln and "reward" in ln and "entropy" in ln for ln in lines), screen  # three titles
        task = next(ln for ln in lines if " task " in ln and "┤" in ln)
        carl = next(ln for ln in lines if " CARL" in ln and ("┤" in ln or "│" in ln) and "vs CARL" not in ln)
        assert task.split(" task ")[0].split()[-1][-2:] != carl.split(" CARL")[0].split()[-1][-2:], (task, carl)
        ticks = next(ln for ln in reversed(lines) if ln.strip().endswith("30"))
        assert all(t.isdigit() for t in ticks.split()), ticks
        assert any(ln.strip().startswith("run " + RUN) and "gate B since step 10" in ln for ln in lines), screen
    finally:
        pane.kill()

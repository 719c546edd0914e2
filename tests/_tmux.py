"""Drive `carl` in a real terminal: tmux, keys as a user types them, assertions on what the pane shows.

One tmux server per test module (its own socket), one session per test. Keys go through `tmux send-keys` exactly
as a terminal sends them (a capital letter is `L`, Escape is `Escape`); the screen is read with `capture-pane`
and polled for a predicate at a short interval (never a blind sleep); a failing wait dumps the pane.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
TMUX = shutil.which("tmux")
POLL_S = 0.05


class PaneTimeout(AssertionError):
    pass


class TmuxServer:
    """A private tmux server (``tmux -L NAME``) for one module; killed at the end."""

    def __init__(self) -> None:
        self.socket = f"carl-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([TMUX or "tmux", "-L", self.socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, check=check, timeout=20)

    def kill(self) -> None:
        self.tmux("kill-server", check=False)

    def start(self, argv: list[str], *, width: int, height: int, env: dict[str, str], cwd: Path) -> "Pane":
        name = f"t{uuid.uuid4().hex[:8]}"
        full_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TMUX", "COLUMNS", "LINES")}
        full_env.update({"TERM": "xterm-256color", "PYTHONPATH": str(REPO), "COLORTERM": "truecolor"})
        full_env.update(env)
        # `exec env …` so the pane's process is carl itself and the environment is exactly this one;
        # `; sleep` keeps the pane (and what carl printed on exit) readable after carl ends
        envs = " ".join(shlex.quote(f"{k}={v}") for k, v in full_env.items())
        cmd = " ".join(shlex.quote(a) for a in argv)
        shell = f"cd {shlex.quote(str(cwd))} && env -i {envs} {cmd}; echo '[carl exited]' $?; sleep 600"
        self.tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height), shell)
        self.tmux("set-option", "-t", name, "status", "off")
        self.tmux("set-option", "-s", "escape-time", "0")  # Escape is sent at once, never taken for a meta prefix
        self.tmux("resize-window", "-t", name, "-x", str(width), "-y", str(height), check=False)
        return Pane(self, name)


class Pane:
    def __init__(self, server: TmuxServer, name: str) -> None:
        self.server, self.name = server, name

    def capture(self) -> str:
        return self.server.tmux("capture-pane", "-p", "-t", self.name).stdout

    def send(self, *keys: str) -> None:
        """tmux key names (`Escape`, `Enter`, `Tab`, `C-s`, a letter, `L`); each as its own keystroke."""
        for key in keys:
            self.server.tmux("send-keys", "-t", self.name, key)
            if key == "Escape":  # a lone ESC is told from an Alt+key by the gap after it: let the app see it alone
                self.stable(settle=0.15)

    def type(self, text: str) -> None:
        """Literal text, one character at a time as a user types it."""
        for ch in text:
            self.server.tmux("send-keys", "-t", self.name, "-l", ch)

    def wait(self, predicate: Callable[[str], bool] | str, timeout: float = 45.0, what: str = "") -> str:
        # generous: a passing wait returns as soon as the screen shows it; only a loaded machine gets near this
        check = (lambda s: predicate in s) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.capture()
            if check(screen):
                return screen
            time.sleep(POLL_S)
        raise PaneTimeout(f"timed out waiting for {what or predicate!r}; the pane showed:\n{screen}")

    def stable(self, settle: float = 0.3, timeout: float = 10.0) -> str:
        """The screen once it has stopped changing for `settle` seconds (after a key with no visible target)."""
        deadline = time.monotonic() + timeout
        last, since = self.capture(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(POLL_S)
            now = self.capture()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= settle:
                return now
        return last

    def kill(self) -> None:
        self.server.tmux("kill-session", "-t", self.name, check=False)


def carl_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "carl_tui", *args]

"""CarlApp: the workbench shell. Five screens (+ the probe panel) as Textual modes, single-key switching,
command palette entries, header with project name and CARL_HOME, footer with bindings."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from engine.home import CarlHome
from screens.context import WorkbenchContext

# mode name → (module, class, key, palette description)
SCREENS: dict[str, tuple[str, str, str, str]] = {
    "project": ("screens.project", "ProjectScreen", "p", "carl.yaml: presets, live validation, edit and save"),
    "train": ("screens.train", "TrainScreen", "t", "start cascade GRPO runs and watch them live"),
    "observe": ("screens.observe", "ObserveScreen", "o", "open any run: Phi, rewards, phase, health"),
    "chat": ("screens.chat", "ChatScreen", "c", "ask the agent about your runs"),
    "ledger": ("screens.ledger", "LedgerScreen", "l", "the signed, hash-chained record of every action"),
    "probe": ("screens.probe", "ProbeScreen", "b", "measure Phi over a logits file"),
    "jobs": ("screens.jobs", "JobsScreen", "j", "remote jobs: estimate, submit with approval, status, logs, stop"),
    "try": ("screens.try_panel", "TryScreen", "y", "try a model: completions shaded token by token by Phi"),
}
# Reached by key and palette but kept out of the footer (it stays readable at 80 columns).
_QUIET = {"jobs", "try"}


def _factory(module: str, cls: str) -> Callable[[], Screen]:
    def make() -> Screen:
        return getattr(importlib.import_module(module), cls)()

    return make


class CarlApp(App):
    TITLE = "carl"
    CSS_PATH = "styles/app.tcss"
    MODES = {name: _factory(mod, cls) for name, (mod, cls, _, _) in SCREENS.items()}
    BINDINGS = [
        *[Binding(key, f"switch_mode('{name}')", name.capitalize(), show=name not in _QUIET)
          for name, (_, _, key, _) in SCREENS.items()],
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, ctx: WorkbenchContext | None = None, screen: str = "project", **kwargs: Any):
        super().__init__(**kwargs)
        self.ctx = ctx or WorkbenchContext(home=CarlHome.from_env(), cwd=Path.cwd())
        self._first = screen if screen in SCREENS else "project"

    def on_mount(self) -> None:
        self.refresh_subtitle()
        self.switch_mode(self._first)

    def refresh_subtitle(self, project: str | None = None) -> None:
        if project is None:
            try:
                from engine.config import load_config

                cfg, _ = load_config(self.ctx.config_path, cwd=self.ctx.cwd)
                project = cfg.project.name
            except Exception:  # an invalid carl.yaml is shown (with its errors) on the project screen
                project = "(invalid carl.yaml)"
        self.sub_title = f"{project} · CARL_HOME {self.ctx.home_display}"

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name, (_, _, key, help_text) in SCREENS.items():
            yield SystemCommand(f"Open {name} screen ({key})", help_text,
                                lambda name=name: self.switch_mode(name))


def run_app(screen: str = "project", screen_args: dict[str, Any] | None = None) -> int:
    args = dict(screen_args or {})
    ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=Path.cwd(),
                           config_path=Path(args["config"]) if args.get("config") else None, screen_args=args)
    CarlApp(ctx=ctx, screen=screen).run()
    return 0

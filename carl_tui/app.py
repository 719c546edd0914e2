"""CarlApp: the workbench shell. The screens as Textual modes, single-key switching (listed in the command
palette and on the ``?`` help screen, kept out of the footer so each screen's own keys fit at 80 columns), a
header that names the screen, the project and CARL_HOME, and Esc that leaves any text input so the screen's
keys work again."""

from __future__ import annotations

import importlib
import sys
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
    "probe": ("screens.probe", "ProbeScreen", "b", "measure Phi over a logits file, or a model on a prompt"),
    "jobs": ("screens.jobs", "JobsScreen", "j", "remote jobs: estimate, submit with approval, status, logs, stop"),
    "try": ("screens.try_panel", "TryScreen", "y", "try a model: completions shaded token by token by Phi"),
}


def _factory(module: str, cls: str) -> Callable[[], Screen]:
    def make() -> Screen:
        return getattr(importlib.import_module(module), cls)()

    return make


class CarlApp(App):
    TITLE = "carl"
    CSS_PATH = "styles/app.tcss"
    # No automatic focus: each screen places it on purpose, never in a text input the user did not enter
    # (a screen key typed on arrival would otherwise land in the box).
    AUTO_FOCUS = None
    MODES = {name: _factory(mod, cls) for name, (mod, cls, _, _) in SCREENS.items()}
    # Screen switching stays out of the footer (the footer is for the screen's own keys); `?` lists it all.
    BINDINGS = [
        *[Binding(key, f"switch_mode('{name}')", name.capitalize(), show=False)
          for name, (_, _, key, _) in SCREENS.items()],
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit", show=False),
        Binding("escape", "leave_input", "Leave input"),  # shown only while a text input has focus
    ]

    def __init__(self, ctx: WorkbenchContext | None = None, screen: str = "project", **kwargs: Any):
        super().__init__(**kwargs)
        self.ctx = ctx or WorkbenchContext(home=CarlHome.from_env(), cwd=Path.cwd())
        self._first = screen if screen in SCREENS else "project"

    REAP_INTERVAL = 2.0  # seconds between two collections of finished worker processes

    def on_mount(self) -> None:
        self.refresh_subtitle()
        self.switch_mode(self._first)
        # a run started here (train, resume, chat's tool) is a child of this process: collect it when it ends,
        # not when the workbench exits (until then a finished worker would stay a zombie)
        self.set_interval(self.REAP_INTERVAL, self.reap_workers)

    def reap_workers(self) -> None:
        runs = sys.modules.get("engine.runs")  # nothing was spawned if the module was never imported
        if runs is not None:
            runs.RunStore.reap()

    def refresh_subtitle(self, project: str | None = None) -> None:
        if project is None:
            try:
                from engine.config import load_config

                cfg, _ = load_config(self.ctx.config_path, cwd=self.ctx.cwd)
                project = cfg.project.name
            except Exception:  # an invalid carl.yaml is shown (with its errors) on the project screen
                project = "(invalid carl.yaml)"
        self.sub_title = f"{project} · CARL_HOME {self.ctx.home_display}"

    def open_try(self, run: str) -> None:
        """The try screen on a run's model (train's `y`): a request the try screen takes when it shows."""
        self.ctx.try_request = {"run": run}
        if self.current_mode == "try":
            self.screen.take_request()
        else:
            self.switch_mode("try")  # the screen takes the request on mount or on resume

    def open_probe(self, logits: str) -> None:
        """The probe screen on a logits file (try's `P`): a request the probe screen takes when it shows."""
        self.ctx.probe_request = {"logits": logits}
        if self.current_mode == "probe":
            self.screen.take_request()
        else:
            self.switch_mode("probe")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name, (_, _, key, help_text) in SCREENS.items():
            yield SystemCommand(f"Open {name} screen ({key})", help_text,
                                lambda name=name: self.switch_mode(name))
        yield SystemCommand("Keys (?)", "every key of this screen and the keys that switch screens", self.action_help)

    # ---- navigation
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "leave_input":
            return self._in_text_input()
        return True

    def _in_text_input(self) -> bool:
        from textual.widgets import Input, TextArea

        return isinstance(self.focused, (Input, TextArea))

    def action_leave_input(self) -> None:
        """Esc on a screen that has no Esc of its own: leave the text input, so the screen's keys work again."""
        if self._in_text_input():
            self.screen.set_focus(None)

    def help_sections(self, screen: Screen) -> list[tuple[str, list[tuple[str, str]]]]:
        """What the `?` screen lists: the screen's own keys, the screen-switching keys, the keys that work
        everywhere. Read from the live bindings, so the list is never out of date."""
        keys: dict[str, list[str]] = {}
        about: dict[str, str] = {}
        for _key, binding in screen._bindings:  # noqa: SLF001 — textual keeps a node's own bindings here
            if not binding.description or binding.system or binding.action.startswith(("app.", "screen.")):
                continue  # Screen's inherited focus/copy keys are listed under "Everywhere"
            keys.setdefault(binding.action, []).append(self.get_key_display(binding))
            about.setdefault(binding.action, binding.description)
        own = [(" · ".join(k), about[action]) for action, k in keys.items()]
        switch = [(key, name) for name, (_, _, key, _) in SCREENS.items()]
        everywhere = [("?", "these keys"), ("ctrl+p", "command palette"), ("esc", "leave a text input"),
                      ("tab", "next field"), ("q", "quit")]
        name = next((n for n, (_, cls, _, _) in SCREENS.items() if cls == type(screen).__name__),
                    type(screen).__name__)
        return [(f"This screen ({name})", own), ("Screens", switch), ("Everywhere", everywhere)]

    def action_help(self) -> None:
        from screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.help_sections(self.screen)))


def run_app(screen: str = "project", screen_args: dict[str, Any] | None = None) -> int:
    args = dict(screen_args or {})
    ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=Path.cwd(),
                           config_path=Path(args["config"]) if args.get("config") else None, screen_args=args)
    CarlApp(ctx=ctx, screen=screen).run()
    line = live_runs_line(ctx.home)
    if line:
        print(line)
    return 0


def live_runs_line(home: CarlHome) -> str | None:
    """The exit line when runs go on after the workbench closes: which, and how to get back to them."""
    try:
        from engine.runs import RunStore

        live = [r["run_id"] for r in RunStore(home).list() if r.get("status") == "running"]
    except Exception:  # a half-written run directory must not turn quitting into a traceback
        return None
    if not live:
        return None
    names = ", ".join(live[:5]) + (f" and {len(live) - 5} more" if len(live) > 5 else "")
    return (f"carl: {len(live)} run{'s' if len(live) > 1 else ''} still running ({names}); "
            f"watch with `carl train --run {live[0]}`, stop with `carl --batch run stop {live[0]}`")

"""The `?` help screen: every key of the screen below it (left), the keys that switch screens and the keys that
work everywhere (right). A view only: the shell hands it the sections, read from the live bindings."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

Sections = list[tuple[str, list[tuple[str, str]]]]


def _rows(rows: list[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"[b]{escape(k.ljust(width))}[/b]  {escape(d)}" for k, d in rows) or "(none)"


class HelpScreen(ModalScreen[None]):
    """First section on the left, the others stacked on the right; esc, ? or q closes it."""

    TITLE = "carl · keys"
    BINDINGS = [Binding("escape", "close", "Close"), Binding("question_mark", "close", "Close", show=False),
                Binding("q", "close", "Close", show=False)]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 100; max-width: 96%; height: auto; max-height: 96%;
                            border: round $accent; background: $surface; padding: 0 1; }
    HelpScreen #help-cols { height: auto; max-height: 100%; }
    HelpScreen #help-own { width: 1fr; height: auto; max-height: 100%; margin-right: 2; }
    HelpScreen #help-rest { width: 32; height: auto; }
    HelpScreen .help-title { color: $accent; text-style: bold; }
    HelpScreen .help-rows { margin-bottom: 1; }
    HelpScreen #help-close { color: $text-muted; }
    """

    def __init__(self, sections: Sections):
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        (first_title, first_rows), rest = self.sections[0], self.sections[1:]
        with Vertical(id="help-box"):
            with Horizontal(id="help-cols"):
                with VerticalScroll(id="help-own"):
                    yield Static(escape(first_title), classes="help-title")
                    yield Static(_rows(first_rows), classes="help-rows")
                with Vertical(id="help-rest"):
                    for title, rows in rest:
                        yield Static(escape(title), classes="help-title")
                        yield Static(_rows(rows), classes="help-rows")
            yield Static("esc / ? / q close · ctrl+p palette", id="help-close")

    def on_mount(self) -> None:
        self.query_one("#help-box").border_title = "keys"

    def action_close(self) -> None:
        self.dismiss(None)

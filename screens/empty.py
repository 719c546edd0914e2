"""An honest empty state for a screen whose engine part has not landed yet."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static


class EmptyStateScreen(Screen):
    """Names what the screen will do and how to get there today (batch verbs)."""

    TITLE_TEXT = ""
    BODY = ""

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(classes="empty-state"):
            yield Static(f"[b]{self.TITLE_TEXT}[/b]", classes="empty-title")
            yield Static(self.BODY, classes="empty-body")
        yield Footer()

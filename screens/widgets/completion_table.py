"""CompletionTable: the sampled completions of recent steps with their reward and Φ (bounded: the last
``max_rows`` rows). Rows come from engine.observe.completions; this widget only draws them."""

from __future__ import annotations

from typing import Iterable

from rich.text import Text
from textual.widgets import DataTable

from engine.frames import Frame
from engine.observe.completions import completion_rows

COLUMNS = (("step", "step"), ("reward", "reward"), ("task", "task"), ("Φ", "phi"), ("completion", "completion"))


def _fmt(v: float | None) -> str:
    return "·" if v is None else f"{v:+.3f}"


class CompletionTable(DataTable):
    DEFAULT_CSS = """
    CompletionTable { height: 1fr; }
    """

    def __init__(self, *, max_rows: int = 400, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.max_rows = max_rows
        self._keys: list[object] = []

    def on_mount(self) -> None:
        for label, key in COLUMNS:
            self.add_column(label, key=key)

    def reset(self) -> None:
        self.clear()
        self._keys.clear()

    @property
    def row_total(self) -> int:
        return len(self._keys)

    def add_frames(self, frames: Iterable[Frame]) -> None:
        """Append the frames' sampled completions; follows the bottom if the cursor was there."""
        rows = completion_rows(frames)[-self.max_rows:]
        if not rows:
            return
        at_bottom = not self._keys or self.cursor_row >= len(self._keys) - 1
        width = max(20, self.size.width - 34) if self.size.width else 60
        for r in rows:
            step = f"{r['step']}" + ("" if r["per"] == "completion" else "*")
            text = Text(r["prompt"][-12:], style="dim") + Text(r["completion"]) if r["prompt"] else Text(r["completion"])
            text.truncate(width, overflow="ellipsis")
            self._keys.append(self.add_row(step, _fmt(r["reward"]), _fmt(r["task"]),
                                                "·" if r["phi"] is None else f"{r['phi']:.3f}", text))
        while len(self._keys) > self.max_rows:
            self.remove_row(self._keys.pop(0))
        if at_bottom:
            self.move_cursor(row=len(self._keys) - 1, animate=False)

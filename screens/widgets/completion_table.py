"""CompletionTable: the sampled completions of recent steps with their reward and Φ (bounded: the last
``max_rows`` rows). Rows come from engine.observe.completions; this widget only draws them."""

from __future__ import annotations

from typing import Iterable

from rich.text import Text

from engine.frames import Frame
from engine.observe.completions import completion_rows
from screens.widgets.bounded_table import BoundedTable

COLUMNS = (("step", "step"), ("reward", "reward"), ("task", "task"), ("Φ", "phi"), ("completion", "completion"))


def _fmt(v: float | None) -> str:
    return "·" if v is None else f"{v:+.3f}"


class CompletionTable(BoundedTable):
    DEFAULT_CSS = """
    CompletionTable { height: 1fr; }
    """
    COLUMNS = COLUMNS

    def __init__(self, *, max_rows: int = 400, id: str | None = None, classes: str | None = None):
        super().__init__(max_rows=max_rows, id=id, classes=classes)

    def add_frames(self, frames: Iterable[Frame]) -> None:
        """Append the frames' sampled completions; follows the bottom if the cursor was there."""
        width = max(20, self.size.width - 34) if self.size.width else 60
        self.append_rows(self._row(r, width) for r in completion_rows(frames)[-self.max_rows:])

    @staticmethod
    def _row(r: dict, width: int) -> tuple[object, ...]:
        step = f"{r['step']}" + ("" if r["per"] == "completion" else "*")
        text = Text(r["prompt"][-12:], style="dim") + Text(r["completion"]) if r["prompt"] else Text(r["completion"])
        text.truncate(width, overflow="ellipsis")
        return step, _fmt(r["reward"]), _fmt(r["task"]), "·" if r["phi"] is None else f"{r['phi']:.3f}", text

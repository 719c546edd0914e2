"""FrameTable: the most recent frames as a table (bounded: the last ``max_rows`` frames)."""

from __future__ import annotations

import math
from typing import Iterable

from textual.widgets import DataTable

from engine.frames import Frame

COLUMNS = (("step", "step"), ("Φ", "phi"), ("entropy", "entropy"), ("reward", "reward_mean"),
           ("task", "task_reward"), ("carl", "carl_reward"), ("gate", "gate"), ("loss", "loss"), ("kl", "kl"),
           ("len", "completion_length"))


def fmt(v: object) -> str:
    if v is None:
        return "·"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.5g}"
    return str(v)


class FrameTable(DataTable):
    DEFAULT_CSS = """
    FrameTable { height: 1fr; }
    """

    def __init__(self, *, max_rows: int = 500, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.max_rows = max_rows
        self._keys: list[object] = []

    def on_mount(self) -> None:
        for label, key in COLUMNS:
            self.add_column(label, key=key)

    def reset(self) -> None:
        self.clear()
        self._keys.clear()

    def add_frames(self, frames: Iterable[Frame]) -> None:
        """Append rows (the oldest drop out past max_rows); follows the bottom if the cursor was there."""
        frames = list(frames)[-self.max_rows:]
        if not frames:
            return
        at_bottom = not self._keys or self.cursor_row >= len(self._keys) - 1
        for f in frames:
            key = self.add_row(*(fmt(f.step if k == "step" else f.gate if k == "gate" else f.get(k))
                                 for _, k in COLUMNS))
            self._keys.append(key)
        while len(self._keys) > self.max_rows:
            self.remove_row(self._keys.pop(0))
        if at_bottom:
            self.move_cursor(row=len(self._keys) - 1, animate=False)

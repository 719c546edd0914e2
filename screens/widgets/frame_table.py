"""FrameTable: the most recent frames as a table (bounded: the last ``max_rows`` frames)."""

from __future__ import annotations

import math
from typing import Iterable


from engine.frames import Frame
from screens.widgets.bounded_table import BoundedTable

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


class FrameTable(BoundedTable):
    DEFAULT_CSS = """
    FrameTable { height: 1fr; }
    """
    COLUMNS = COLUMNS

    def __init__(self, *, max_rows: int = 500, id: str | None = None, classes: str | None = None):
        super().__init__(max_rows=max_rows, id=id, classes=classes)

    def add_frames(self, frames: Iterable[Frame]) -> None:
        """Append rows (the oldest drop out past max_rows); follows the bottom if the cursor was there."""
        self.append_rows(tuple(fmt(f.step if k == "step" else f.gate if k == "gate" else f.get(k)) for _, k in COLUMNS)
                         for f in frames)

"""AgentPanel: the seed's three agent numbers of a run, latest and first, for the train screen.

Frames of an agent run carry ``agent/task_completion``, ``agent/tool_format``, ``agent/tool_calls_per_task``
(and per assistant turn ``agent/phi_turn_1``, ``agent/phi_turn_2`` …) in their ``extra`` (docs/agents.md). The
panel shows each number's latest value and its first, and the latest mean Phi per turn; it is hidden for runs
without them. A pure renderer of frames: ``set_frames(frames)``; no engine state, no timers.
"""

from __future__ import annotations

from typing import Any, Sequence

from textual.widgets import Static

NUMBERS = (("agent/task_completion", "task completion"), ("agent/tool_format", "tool format"),
           ("agent/tool_calls_per_task", "tool calls/task"))
TURN_PREFIX = "agent/phi_turn_"


def _value(frame: Any, name: str) -> float | None:
    extra = getattr(frame, "extra", None)
    if extra is None and isinstance(frame, dict):
        extra = frame.get("extra") or {}
    v = (extra or {}).get(name)
    return float(v) if isinstance(v, (int, float)) and v == v else None


def summary(frames: Sequence[Any]) -> dict[str, Any] | None:
    """``{"numbers": {name: (first, last)}, "turns": [latest Phi of turn 1, 2, …], "turns_step": step}``, or
    None when no frame has an agent number."""
    numbers: dict[str, tuple[float, float]] = {}
    for name, _ in NUMBERS:
        vals = [v for v in (_value(f, name) for f in frames) if v is not None]
        if vals:
            numbers[name] = (vals[0], vals[-1])
    if not numbers:
        return None
    turns: list[float] = []
    turns_step = None
    for f in reversed(list(frames)):
        extra = getattr(f, "extra", None) or (f.get("extra") if isinstance(f, dict) else None) or {}
        keys = sorted((k for k in extra if k.startswith(TURN_PREFIX) and k[len(TURN_PREFIX):].isdigit()),
                      key=lambda k: int(k[len(TURN_PREFIX):]))
        if keys:
            turns = [float(extra[k]) for k in keys]
            turns_step = getattr(f, "step", None) if not isinstance(f, dict) else f.get("step")
            break
    return {"numbers": numbers, "turns": turns, "turns_step": turns_step}


def render(frames: Sequence[Any]) -> str:
    """The panel's text ('' for a run without agent numbers)."""
    s = summary(frames)
    if s is None:
        return ""
    parts = []
    for name, label in NUMBERS:
        if name in s["numbers"]:
            first, last = s["numbers"][name]
            parts.append(f"{label} [b]{last:.3f}[/b] (first {first:.3f})")
    lines = ["agent: " + " · ".join(parts[:2])]
    rest = parts[2:]
    if s["turns"]:
        rest.append("Φ per turn " + " · ".join(f"{v:.3f}" for v in s["turns"]))
    if rest:
        lines.append("       " + " · ".join(rest))
    return "\n".join(lines)


class AgentPanel(Static):
    """Hidden until the frames carry agent numbers."""

    DEFAULT_CSS = """
    AgentPanel { height: auto; }
    """

    def on_mount(self) -> None:
        self.display = False

    def set_frames(self, frames: Sequence[Any]) -> None:
        text = render(frames)
        self.display = bool(text)
        self.update(text)

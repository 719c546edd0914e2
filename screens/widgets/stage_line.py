"""One line of a ``train --send-it`` run's stages: done ✓ / running ▶ / waiting · (failed ✗, stopped ■,
skipped –), each with its key number (engine/trainer/pipeline.py). Rendered from the run's ``meta.json``
``pipeline`` list; hidden for a plain GRPO run."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.widgets import Static

MARKS = {"done": "[green]✓[/]", "running": "[b]▶[/]", "waiting": "[dim]·[/]", "failed": "[red]✗[/]",
         "stopped": "[yellow]■[/]", "skipped": "[dim]–[/]"}


def key_text(stage: dict[str, Any]) -> str:
    key = stage.get("key")
    if key is None:
        return ""
    if isinstance(key, float):
        return f"{key:.3f}"
    if stage.get("name") == "push":
        return str(key)[:10]
    return str(key)


def stage_line(stages: list[dict[str, Any]] | None) -> str:
    """``sft ✓ 0.330 · gate ✓ pass · grpo ▶ · eval · · push ·`` as Rich markup ('' without stages)."""
    parts = []
    for s in stages or []:
        key = key_text(s)
        mark = MARKS.get(s.get("status"), "?")
        parts.append(f"{escape(str(s.get('name')))} {mark}" + (f" {escape(key)}" if key else ""))
    return "stages: " + "  ".join(parts) if parts else ""


class StageLine(Static):
    DEFAULT_CSS = "StageLine { height: auto; }"

    def show(self, stages: list[dict[str, Any]] | None) -> None:
        text = stage_line(stages)
        self.display = bool(text)
        self.update(text)

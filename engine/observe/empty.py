"""A source with no frames is *empty*, never healthy: one place that says so (batch observe, the screen)."""

from __future__ import annotations

from typing import Any

from engine.errors import ValidationError

EMPTY_CODE = "carl.validation.empty_source"


def empty_source_error(summary: dict[str, Any]) -> ValidationError | None:
    """The error for a summary with no frames (None when it has some). Exit 2: nothing in the source parses
    as a frame — a foreign file (24 skipped lines of /etc/passwd), an empty file, a run not started yet."""
    if summary.get("n_frames"):
        return None
    skipped = int(summary.get("skipped_lines") or 0)
    source = summary.get("source") or "the source"
    if skipped:
        message = f"no frames in {source} ({skipped} line{'s' if skipped != 1 else ''}, none of them a frame)"
        hint = ("carl reads frames.jsonl, JSONL of metric dicts with a step field, TRL trainer_state.json and "
                "trackio; check that this is one of them.")
    else:
        message = f"no frames in {source} (it holds nothing yet)"
        hint = "If a run is writing to it, follow it: `carl --batch observe … --follow`."
    return ValidationError(message, hint=hint, code=EMPTY_CODE,
                           context={"source": source, "skipped_lines": skipped})

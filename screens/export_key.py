"""The export key (``E``) of the observe and train screens: what ``carl --batch observe --export DIR`` writes
(engine.observe.export: frames.csv and the phi/reward/entropy/loss PNG charts), for the frames on screen, into
``CARL_HOME/exports/NAME-YYYYMMDD-HHMMSS/``; a notification says where (or why not)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from engine.errors import CARLError
from screens.context import context_of


def export_dir(ctx: Any, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[-60:] or "frames"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(ctx.clock() if ctx.clock else time.time()))
    return Path(ctx.home.root) / "exports" / f"{safe}-{stamp}"


def export_frames(screen: Any, frames: list[Any], name: str | None) -> None:
    """Export ``frames`` (a copy is taken now) in a worker thread; notify the directory when done."""
    if not frames:
        screen.notify("Nothing to export yet: no frames on screen.", severity="warning", timeout=4)
        return
    ctx = context_of(screen)
    out = export_dir(ctx, name or "frames")
    snapshot = list(frames)

    def work() -> None:
        from engine.observe.export import export

        try:
            res = export(snapshot, out)
        except CARLError as exc:
            screen.app.call_from_thread(screen.notify, f"{exc.code}: {exc.message} — {exc.hint}", severity="error",
                                        timeout=8)
            return
        except Exception as exc:  # noqa: BLE001 — a notification, the workbench stays up
            screen.app.call_from_thread(screen.notify, f"export failed: {type(exc).__name__}: {exc}",
                                        severity="error", timeout=8)
            return
        charts = ", ".join(Path(c).name for c in res.get("charts") or []) or "no charts"
        screen.app.call_from_thread(screen.notify, f"exported {len(snapshot)} frames to {res['dir']} "
                                                   f"(frames.csv, {charts})", timeout=8)

    screen.run_worker(work, thread=True, group="export", exclusive=True)

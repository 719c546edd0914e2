"""TensorBoard event directories as an observe source (TRL / transformers ``report_to="tensorboard"``).

Read with TensorBoard's own reader (``tensorboard.backend.event_processing.event_accumulator``, imported only
when a TensorBoard source is opened). Scalars are grouped by step into one metric dict per step (the tag is the
metric name, so ``train/reward`` → ``reward_mean``, ``train/frac_reward_zero_std`` → the Frame field, ``train/
grad_norm`` → ``extra``) and normalised like every other source; a step's wall time becomes its ``timestamp``.

A directory may hold several runs (``runs/Dec01_20-33-07_host/`` …): the source reads the run directory whose
event files were written last (or the one given). Event files grow while TRL trains: ``poll`` reloads and
returns the steps past the last one seen; a new event file (a restarted run) in the same directory is read too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import ValidationError
from engine.frames import Frame
from engine.observe.sources.base import RereadSource, frames_from_metrics

EVENT_GLOB = "events.out.tfevents.*"


def event_files(root: Path) -> list[Path]:
    """Event files under ``root`` (a file counts as itself)."""
    if root.is_file():
        return [root] if root.name.startswith("events.out.tfevents.") else []
    return sorted(p for p in root.rglob(EVENT_GLOB) if p.is_file())


def is_event_dir(path: Path) -> bool:
    try:
        return bool(event_files(path))
    except OSError:
        return False


def latest_run_dir(root: Path) -> Path:
    """The directory of the event file written last under ``root`` (``root`` itself when it holds them)."""
    files = event_files(root)
    if not files:
        raise ValidationError(f"no TensorBoard event files in {root}",
                              hint="Point at the logging directory (…/runs/<run>/ holding events.out.tfevents.*).",
                              context={"path": str(root)})
    if root.is_file():
        return root
    newest = max(files, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    return newest.parent


class TensorBoardSource(RereadSource):
    """A TensorBoard run directory (or one event file), read with TensorBoard's event accumulator."""

    kind = "tensorboard"
    via = "tensorboard-event-accumulator"
    POLL_RETRY = (ValidationError,)  # a record caught mid-write

    def __init__(self, path: str | Path):
        self.root = Path(path).expanduser()
        self.label = str(path)
        self.run_dir = latest_run_dir(self.root)
        self.run = self.run_dir.name if self.run_dir.is_dir() else self.run_dir.stem
        self._acc: Any = None
        self._last_step: int | None = None
        self.tags: list[str] = []

    def _accumulator(self) -> Any:
        if self._acc is None:
            from tensorboard.backend.event_processing import event_accumulator as ea

            # keep every scalar (the default reservoir samples 10 000 per tag); skip images, histograms…
            self._acc = ea.EventAccumulator(str(self.run_dir), size_guidance={
                ea.SCALARS: 0, ea.TENSORS: 0, ea.IMAGES: 1, ea.AUDIO: 1, ea.HISTOGRAMS: 1,
                ea.COMPRESSED_HISTOGRAMS: 1})
        return self._acc

    def _frames(self) -> tuple[list[Frame], int]:
        acc = self._accumulator()
        try:
            acc.Reload()
        except Exception as exc:  # noqa: BLE001 — a corrupt record: TensorBoard's reader raises its own types
            raise ValidationError(f"cannot read TensorBoard events in {self.run_dir}: {type(exc).__name__}: {exc}",
                                  hint="Check the event files (a writer killed mid-record leaves a torn tail).",
                                  context={"path": str(self.run_dir)}) from exc
        tags = acc.Tags()
        self.tags = sorted(tags.get("scalars") or [])
        by_step: dict[int, dict[str, Any]] = {}
        for tag in self.tags:
            for ev in acc.Scalars(tag):
                d = by_step.setdefault(int(ev.step), {"step": int(ev.step)})
                d[tag] = float(ev.value)
                d["timestamp"] = max(float(ev.wall_time), d.get("timestamp") or 0.0)
        return frames_from_metrics(by_step[step] for step in sorted(by_step))

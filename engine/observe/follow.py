"""Following a source live: poll it, yield new frames in batches, stop when the run ends or on request.

The same loop feeds `carl --batch observe --follow` (JSON lines) and the observe screen's worker thread
(which posts each batch to the UI; the charts redraw at a bounded rate whatever the batch rate).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from engine.frames import Frame
from engine.observe.sources import Source

POLL_INTERVAL = 0.5  # seconds between polls when nothing new arrived


@dataclass
class Batch:
    frames: list[Frame] = field(default_factory=list)
    skipped: int = 0
    reset: bool = False  # the source restarted (file truncated / rotated): drop what you had
    ended: bool = False  # the run is over: this is the last batch


def follow(source: Source, *, poll_interval: float = POLL_INTERVAL, stop: threading.Event | None = None,
           idle_timeout: float | None = None, clock: Callable[[], float] = time.monotonic,
           idle_batches: bool = False) -> Iterator[Batch]:
    """Yield a Batch for every poll that found something, until the run ends (``source.ended()``), ``stop`` is
    set, or nothing new arrived for ``idle_timeout`` seconds. Call ``source.load()`` first for the history:
    this yields only what arrives after it. With ``idle_batches`` a poll that found nothing yields an empty
    Batch too (before waiting), so a consumer that throttles its work can catch up once the source is quiet."""
    stop = stop or threading.Event()
    last_new = clock()
    while not stop.is_set():
        frames, skipped, reset = source.poll()
        ended = source.ended()
        if ended:  # drain what the writer flushed just before it finished
            more, more_skipped, _ = source.poll()
            frames += more
            skipped += more_skipped
        if frames or skipped or reset or ended:
            if frames:
                last_new = clock()
            yield Batch(frames, skipped, reset, ended)
            if ended:
                return
        elif idle_timeout is not None and clock() - last_new >= idle_timeout:
            return
        elif idle_batches:
            yield Batch()
        if not frames:
            stop.wait(poll_interval)

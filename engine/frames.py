"""Frames: one typed record per logged training step, shared by the trainer (writer) and observe (reader).

A run's ``frames.jsonl`` holds one JSON object per line, flushed per frame. Readers tolerate a torn last
line (a writer killed mid-line), blank and malformed lines (skipped and counted).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator


@dataclass(slots=True)
class Frame:
    step: int
    phi: float | None = None
    entropy: float | None = None
    reward_mean: float | None = None
    task_reward: float | None = None
    carl_reward: float | None = None
    rewards: dict[str, float] = field(default_factory=dict)  # per reward-function means
    carl_components: dict[str, float] = field(default_factory=dict)  # coherence / cloud / discontinuity
    gate: str | None = None  # "A" (task only) or "B" (task + CARL)
    carl_weight: float | None = None
    loss: float | None = None
    lr: float | None = None
    kl: float | None = None
    completion_length: float | None = None
    clipped_ratio: float | None = None
    frac_reward_zero_std: float | None = None
    step_time: float | None = None
    timestamp: float | None = None
    sample: str | None = None
    extra: dict[str, float] = field(default_factory=dict)  # any other numeric metric

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None and v != {}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Frame":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


FRAME_FIELDS = tuple(f.name for f in fields(Frame))


class FrameWriter:
    """Append frames to a JSONL file, one flushed line each (``fsync=True`` for crash safety)."""

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._fsync = fsync

    def write(self, frame: Frame | dict[str, Any]) -> None:
        d = frame.to_dict() if isinstance(frame, Frame) else dict(frame)
        d.setdefault("timestamp", time.time())
        self._fh.write(json.dumps(d, separators=(",", ":"), allow_nan=True) + "\n")
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_frames(path: str | Path) -> tuple[list[Frame], int]:
    """All complete frames of a file and the number of lines skipped (blank, malformed or torn)."""
    frames: list[Frame] = []
    skipped = 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            frames.append(Frame.from_dict(d))
        except (ValueError, TypeError):
            skipped += 1
    return frames, skipped


def iter_frames(path: str | Path) -> Iterator[Frame]:
    yield from read_frames(path)[0]

"""Frames: one typed record per logged training step, shared by the trainer (writer) and observe (reader).

A run's ``frames.jsonl`` holds one JSON object per line, flushed per frame. Readers tolerate a torn last
line (a writer killed mid-line), blank and malformed lines (skipped and counted), files that grow while
read, and (in :class:`JsonlTail`, used by ``--follow``) truncation and rotation.

Parsing uses orjson (the fast path); a line orjson rejects is retried with the standard library, which
also accepts the ``NaN`` / ``Infinity`` tokens :class:`FrameWriter` writes for non-finite values (so a NaN
loss survives the round trip and observe can flag it).
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import orjson


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
    # a bounded sample of the step's completions: [{"prompt", "completion", "reward", "task", "carl", "phi"}]
    samples: list[dict[str, Any]] | None = None
    extra: dict[str, float] = field(default_factory=dict)  # any other numeric metric
    system: dict[str, Any] | None = None  # the worker's CPU/RAM and the GPUs at this step (engine/system.py)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None and v != {}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Frame":
        """A Frame from a dict with Frame field names. Unknown keys with numeric values go to ``extra``;
        other unknown keys (``type``, ``run_id`` …) are dropped. Raises TypeError/ValueError when ``step``
        is missing or not an integer."""
        try:
            f = cls(**d)  # the fast path: carl's own frames
        except TypeError:
            known = {k: v for k, v in d.items() if k in _FIELD_SET}
            extra = dict(known.get("extra") or {})
            for k, v in d.items():
                if k not in _FIELD_SET and isinstance(v, (int, float)) and not isinstance(v, bool):
                    extra[k] = float(v)
            if extra:
                known["extra"] = extra
            f = cls(**known)
        step = f.step
        if type(step) is not int:
            if isinstance(step, float) and step.is_integer():
                f.step = int(step)
            elif isinstance(step, str) and step.strip().lstrip("-").isdigit():
                f.step = int(step)
            else:
                raise ValueError(f"frame step must be an integer, got {step!r}")
        return f

    def get(self, name: str) -> float | None:
        """A metric by name: a Frame field, ``rewards/<fn>``, ``carl/<component>`` or an ``extra`` key."""
        if name in _SCALAR_SET:
            return getattr(self, name)
        if name.startswith("rewards/"):
            v = self.rewards.get(name[8:])
            if v is not None:
                return v
        elif name.startswith("carl/"):
            v = self.carl_components.get(name[5:])
            if v is not None:
                return v
        return self.extra.get(name)


FRAME_FIELDS = tuple(f.name for f in fields(Frame))
_FIELD_SET = frozenset(FRAME_FIELDS)
# numeric per-step scalars (what charts, CSV and analysis use)
SCALAR_FIELDS = ("phi", "entropy", "reward_mean", "task_reward", "carl_reward", "carl_weight", "loss", "lr",
                 "kl", "completion_length", "clipped_ratio", "frac_reward_zero_std", "step_time", "timestamp")
_SCALAR_SET = frozenset(SCALAR_FIELDS) | {"step"}


def _dumps(d: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(d)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(d, separators=(",", ":"), allow_nan=True, default=str).encode()


def _has_nonfinite(d: dict[str, Any]) -> bool:
    for v in d.values():
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            return True
        if isinstance(v, dict) and _has_nonfinite(v):
            return True
    return False


class FrameWriter:
    """Append frames to a JSONL file, one flushed line each (``fsync=True`` for crash safety).

    Each frame is written with a single ``write`` of the whole line, so a concurrent reader sees either
    nothing or a (possibly torn) prefix of the last line, never interleaved lines. Non-finite floats are
    written as ``NaN`` / ``Infinity`` (the reader maps them back)."""

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab", buffering=0)
        self._fsync = fsync

    def write(self, frame: Frame | dict[str, Any]) -> None:
        d = frame.to_dict() if isinstance(frame, Frame) else dict(frame)
        d.setdefault("timestamp", time.time())
        if _has_nonfinite(d):  # orjson would write null; keep the NaN visible
            line = json.dumps(d, separators=(",", ":"), allow_nan=True, default=str).encode()
        else:
            line = _dumps(d)
        self._fh.write(line + b"\n")
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_line(line: bytes | str) -> Any:
    """One JSON value from one line: orjson first, the standard library for NaN/Infinity. Raises ValueError."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


class gc_paused:
    """``with gc_paused():`` — the cyclic GC off for the block (restored as it was). Frames make no reference
    cycles; while a long run's million Frame objects are created (or a summary allocates its columns next to
    them), the collector would walk all of them again and again for nothing (a third of the read's time)."""

    def __enter__(self) -> None:
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.was:
            gc.enable()


def parse_lines(lines: list[bytes], convert: Callable[[dict[str, Any]], Frame] | None = None
                ) -> tuple[list[Frame], int, bool]:
    """Frames from complete lines: ``(frames, skipped, done)``.

    Blank lines are ignored; malformed ones (not JSON, not an object, no integer ``step``) are counted in
    ``skipped``. Objects with a ``type`` other than ``"frame"`` are events, neither frames nor errors;
    ``{"type": "done"}`` sets ``done``. A dict whose keys are all Frame fields takes the fast path
    (``Frame(**d)``); any other goes through ``convert`` (default :meth:`Frame.from_dict`; observe passes a
    normaliser that understands TRL / trackio metric names).
    """
    if len(lines) > 1000:
        with gc_paused():
            return _parse_lines(lines, convert)
    return _parse_lines(lines, convert)


def _parse_lines(lines: list[bytes], convert: Callable[[dict[str, Any]], Frame] | None
                 ) -> tuple[list[Frame], int, bool]:
    frames: list[Frame] = []
    append = frames.append
    skipped = 0
    done = False
    loads = orjson.loads
    convert = convert or Frame.from_dict
    for line in lines:
        try:
            d = loads(line)
        except orjson.JSONDecodeError:
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except ValueError:
                skipped += 1
                continue
        if type(d) is not dict:
            skipped += 1
            continue
        t = d.get("type")
        if t is not None:
            if t != "frame":
                done = done or t == "done"
                continue
            d = {k: v for k, v in d.items() if k != "type"}
        try:
            f = Frame(**d)
            if type(f.step) is not int:
                f = convert(d)
        except TypeError:
            try:
                f = convert(d)
            except (TypeError, ValueError):
                skipped += 1
                continue
        except ValueError:
            skipped += 1
            continue
        if f is None:
            skipped += 1
            continue
        append(f)
    return frames, skipped, done


def parse_frame_lines(lines: list[bytes]) -> tuple[list[Frame], int]:
    """Frames from complete lines and the number skipped (see :func:`parse_lines`)."""
    frames, skipped, _ = parse_lines(lines)
    return frames, skipped


def read_frames(path: str | Path) -> tuple[list[Frame], int]:
    """All complete frames of a file and the number of lines skipped (malformed, or a torn last line)."""
    data = Path(path).read_bytes()
    return parse_frame_lines(data.split(b"\n"))


class JsonlTail:
    """Incremental reader of a JSONL file that grows while it is read (``--follow``).

    ``poll()`` returns the complete lines appended since the last call (a partial last line is held back
    until its newline arrives). Truncation (the file got shorter) and rotation (a new file at the path:
    another inode) restart from the top of the new file and set ``reset`` so a consumer can drop what it
    had. A missing file is not an error while following: it reads as no new lines.
    """

    def __init__(self, path: str | Path, *, chunk: int = 1 << 20):
        self.path = Path(path)
        self.offset = 0
        self._ino: int | None = None
        self._partial = b""
        self._chunk = chunk
        self.resets = 0

    def poll(self) -> tuple[list[bytes], bool]:
        """(new complete lines, reset) — reset is True when the file was truncated or replaced."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return [], False
        reset = False
        if (self._ino is not None and st.st_ino != self._ino) or st.st_size < self.offset:
            self.offset, self._partial, reset = 0, b"", True
            self.resets += 1
        self._ino = st.st_ino
        if st.st_size == self.offset:
            return [], reset
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self._partial = data
            return [], reset
        self._partial = data[cut + 1:]
        return data[:cut].split(b"\n"), reset

    @property
    def pending(self) -> bytes:
        """The partial last line held back (a writer mid-line, or one killed mid-line)."""
        return self._partial


class FrameTail:
    """:class:`JsonlTail` that yields Frames: ``poll() -> (frames, skipped, reset)``."""

    def __init__(self, path: str | Path):
        self.tail = JsonlTail(path)

    def poll(self) -> tuple[list[Frame], int, bool]:
        lines, reset = self.tail.poll()
        frames, skipped = parse_frame_lines(lines)
        return frames, skipped, reset

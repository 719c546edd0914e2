"""carl's frames.jsonl / any JSONL of metric dicts, and TRL/transformers trainer_state.json."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from engine.errors import ValidationError
from engine.frames import Frame, JsonlTail, parse_lines
from engine.observe.sources.base import Source, merge_by_step, normalize_metrics


TERMINAL_STATUSES = ("completed", "failed", "stopped")


def load_json_bytes(raw: bytes) -> object:
    """JSON as Python's json module writes it: bare ``NaN``/``Infinity``/``-Infinity`` included (transformers
    writes a diverged ``grad_norm`` that way). orjson first (fast); the standard parser only when it refuses."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _is_verl(path: Path) -> bool:
    """verl's file logger writes ``{"step": N, "data": {…}}`` lines."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(1 << 20)
        d = json.loads(first)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "step" in d and isinstance(d.get("data"), dict)


class JsonlSource(Source):
    """carl's frames.jsonl or any JSONL of metric dicts; follows growth, truncation and rotation."""

    kind = "jsonl"

    def __init__(self, path: str | Path, *, run: str | None = None, run_dir: Path | None = None):
        self.path = Path(path)
        self.label = str(path)
        self.run = run
        self.run_dir = run_dir
        if run_dir is not None:
            self.kind = "carl"
        elif _is_verl(self.path):
            self.reader = "verl"
        self._tail = JsonlTail(self.path)
        self._done = False

    def _parse(self, lines: list[bytes]) -> tuple[list[Frame], int]:
        frames, skipped, done = parse_lines(lines, normalize_metrics)
        self._done = self._done or done
        return frames, skipped

    def load(self) -> tuple[list[Frame], int]:
        if not self.path.exists() and self.run_dir is None:
            raise ValidationError(f"cannot read {self.path}: no such file", hint="Check the path.",
                                  context={"path": str(self.path)})
        try:
            lines, _ = self._tail.poll()
        except OSError as exc:
            raise ValidationError(f"cannot read {self.path}: {exc.strerror}", hint="Check the path and permissions.",
                                  context={"path": str(self.path)}) from exc
        frames, skipped = self._parse(lines)
        pending = self._tail.pending
        if pending.strip():  # a last line without its newline: complete JSON, or torn by a killed writer
            more, bad = self._parse([pending])
            if more:
                frames += more
                self._tail._partial = b""
            skipped += bad
        return frames, skipped

    def poll(self) -> tuple[list[Frame], int, bool]:
        lines, reset = self._tail.poll()
        if reset:
            self._done = False
        frames, skipped = self._parse(lines)
        return frames, skipped, reset

    def ended(self) -> bool:
        if self._done:
            return True
        if self.run_dir is not None:
            meta = self.run_dir / "meta.json"
            try:
                status = json.loads(meta.read_text()).get("status")
            except (OSError, ValueError, AttributeError):
                return False
            return status in TERMINAL_STATUSES
        return False


class TrainerStateSource(Source):
    """TRL / transformers trainer_state.json (or a directory holding one, or checkpoint-N dirs)."""

    kind = "trainer_state"

    def __init__(self, path: str | Path):
        self.root = Path(path)
        self.label = str(path)
        self.run = self.root.parent.name if self.root.is_file() else self.root.name
        self._sig: tuple[str, int, int] | None = None
        self._last_step: int | None = None
        self._ended = False

    def state_path(self) -> Path:
        if self.root.is_file():
            return self.root
        direct = self.root / "trainer_state.json"
        if direct.exists():
            return direct
        ckpts = [p for p in self.root.glob("checkpoint-*/trainer_state.json")
                 if p.parent.name.split("-")[-1].isdigit()]
        if not ckpts:
            raise ValidationError(f"no trainer_state.json in {self.root}",
                                  hint="Point --file at a trainer_state.json, a checkpoint-N directory or the "
                                       "Trainer's output_dir.", context={"path": str(self.root)})
        return max(ckpts, key=lambda p: int(p.parent.name.split("-")[-1]))

    def _read(self) -> tuple[list[Frame], int]:
        p = self.state_path()
        try:
            state = load_json_bytes(p.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValidationError(f"cannot read {p}: not a trainer_state.json ({exc})",
                                  hint="Check the file; TRL writes it with each checkpoint.",
                                  context={"path": str(p)}) from exc
        if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
            raise ValidationError(f"{p} has no log_history: not a trainer_state.json",
                                  hint="Point --file at the trainer_state.json TRL/transformers wrote.",
                                  context={"path": str(p)})
        frames: list[Frame] = []
        skipped = 0
        for entry in state["log_history"]:
            try:
                frames.append(normalize_metrics(entry))
            except (ValueError, TypeError, AttributeError):
                skipped += 1
        gs, ms = state.get("global_step"), state.get("max_steps")
        ctl = ((state.get("stateful_callbacks") or {}).get("TrainerControl") or {}).get("args") or {}
        self._ended = bool(ctl.get("should_training_stop")) or (
            isinstance(gs, int) and isinstance(ms, int) and ms > 0 and gs >= ms)
        st = p.stat()
        self._sig = (str(p), st.st_mtime_ns, st.st_size)
        frames = merge_by_step(frames)
        from engine.coherence import fill_phi, vocab_size_from_dir

        # phi from the logged entropy when the checkpoint's config.json tells the vocabulary size
        fill_phi(frames, vocab_size_from_dir(p.parent, self.root if self.root.is_dir() else self.root.parent))
        return frames, skipped

    def _snapshot(self) -> tuple[list[Frame], int]:
        return self._read()

    def poll(self) -> tuple[list[Frame], int, bool]:
        try:
            p = self.state_path()
            st = p.stat()
        except (ValidationError, OSError):
            return [], 0, False
        if self._sig == (str(p), st.st_mtime_ns, st.st_size):
            return [], 0, False
        try:
            frames, skipped = self._read()
        except ValidationError:  # caught mid-write: try again next poll
            return [], 0, False
        last = self._last_step
        reset = last is not None and frames and frames[-1].step < last
        new = frames if (reset or last is None) else [f for f in frames if f.step > last]
        if frames:
            self._last_step = frames[-1].step
        return new, skipped, bool(reset)

    def ended(self) -> bool:
        return self._ended



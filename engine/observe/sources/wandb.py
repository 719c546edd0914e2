"""W&B runs on disk as a source: a ``.wandb`` file, an offline run directory (``WANDB_MODE=offline``:
``wandb/offline-run-…/run-<id>.wandb``) or a ``wandb/`` directory holding runs (the newest is read).

wandb ≥ 0.17 has no Python reader for its run files (its Go core reads them). The file is a LevelDB-style log:
a 7-byte header (``:W&B``, magic ``0xBEE1``, version) then 32 KiB blocks of records, each with a 7-byte header
(CRC-32 of type+data, little-endian length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4); a block with fewer than 7 bytes
left is padded. Each assembled record is a ``wandb.proto.wandb_internal_pb2.Record`` — parsed with wandb's own
protobuf class. ``history`` records carry one logged row (items: ``nested_key`` path and ``value_json``); TRL's
``train/`` prefixes and its ``train/global_step`` are understood by the normaliser; an ``exit`` record ends the run.

Torn tails (a run still writing, or killed) are left for the next poll; a record whose CRC does not match is
skipped and counted.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

from engine.errors import ValidationError
from engine.frames import Frame
from engine.observe.sources.base import Source, frames_from_metrics

MAGIC = b":W&B"
FILE_HEADER = 7
BLOCK = 32768
REC_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
SKIP_PREFIXES = ("profiling/", "_runtime")  # wandb's wall clock; TRL's per-call timers: logged between steps, not training metrics
STEP_ONLY = ("train/global_step", "train/epoch")


def is_wandb_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


def find_run_file(root: Path) -> Path | None:
    """The ``.wandb`` file of a run dir, or of the newest run under a ``wandb/`` dir (or a dir holding one)."""
    if root.is_file():
        return root
    direct = sorted(root.glob("run-*.wandb")) or sorted(root.glob("*.wandb"))
    if direct:
        return direct[-1]
    for base in (root, root / "wandb"):
        latest = base / "latest-run"
        if latest.is_dir():
            found = sorted(latest.glob("*.wandb"))
            if found:
                return found[-1]
        runs = [p for p in base.glob("*run-*/*.wandb")]
        if runs:
            return max(runs, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    return None


class WandbReader:
    """Incremental reader of a ``.wandb`` file: :meth:`read` returns the records completed since the last call."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0  # absolute offset of the next record header
        self._parts: bytes | None = None
        self.bad = 0

    def read(self) -> list[bytes]:
        with open(self.path, "rb") as fh:
            if self.offset == 0:
                head = fh.read(FILE_HEADER)
                if len(head) < FILE_HEADER:
                    return []
                if head[:4] != MAGIC:
                    raise ValidationError(f"{self.path} is not a W&B run file (no :W&B header)",
                                          hint="Point --file at a run-<id>.wandb file or a wandb run directory.",
                                          context={"path": str(self.path)})
                self.offset = FILE_HEADER
            fh.seek(self.offset)
            data = fh.read()
        out: list[bytes] = []
        pos = 0
        off = self.offset
        while True:
            left = BLOCK - (off % BLOCK)
            if left < REC_HEADER:  # block trailer padding
                if len(data) - pos < left:
                    break
                pos += left
                off += left
                continue
            if len(data) - pos < REC_HEADER:
                break
            crc, length, typ = struct.unpack_from("<IHB", data, pos)
            if length == 0 and typ == 0 and crc == 0:  # zero fill (pre-allocated / padding)
                if len(data) - pos < left:
                    break
                pos += left
                off += left
                continue
            end = pos + REC_HEADER + length
            if end > len(data):
                break  # torn: the rest is still being written
            chunk = data[pos + REC_HEADER:end]
            pos, off = end, off + REC_HEADER + length
            if zlib.crc32(bytes([typ]) + chunk) & 0xFFFFFFFF != crc:
                self.bad += 1
                self._parts = None
                continue
            if typ == FULL:
                out.append(chunk)
            elif typ == FIRST:
                self._parts = chunk
            elif typ == MIDDLE and self._parts is not None:
                self._parts += chunk
            elif typ == LAST and self._parts is not None:
                out.append(self._parts + chunk)
                self._parts = None
            else:
                self.bad += 1
        self.offset = off
        return out


def _item_value(raw: str) -> Any:
    try:
        return json.loads(raw)  # accepts NaN / Infinity as wandb writes them
    except ValueError:
        return None


class WandbSource(Source):
    """One W&B run read from its ``.wandb`` file (offline or synced, live or finished)."""

    kind = "wandb"
    reader = "wandb"

    def __init__(self, path: str | Path):
        self.root = Path(path).expanduser()
        self.label = str(path)
        f = find_run_file(self.root)
        if f is None:
            raise ValidationError(f"no .wandb run file in {self.root}",
                                  hint="Point at wandb/offline-run-…/ (or its run-<id>.wandb).",
                                  context={"path": str(self.root)})
        self.file = f
        self.run = f.stem[4:] if f.stem.startswith("run-") else f.stem
        self._reader = WandbReader(f)
        self._ended = False
        self._last_step: int | None = None

    def _records(self) -> tuple[list[Frame], int]:
        from wandb.proto import wandb_internal_pb2 as pb

        bad_before = self._reader.bad
        rows: list[dict[str, Any]] = []
        for raw in self._reader.read():
            rec = pb.Record()
            try:
                rec.ParseFromString(raw)
            except Exception:  # noqa: BLE001 — protobuf's DecodeError
                self._reader.bad += 1
                continue
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                row: dict[str, Any] = {}
                for item in rec.history.item:
                    key = "/".join(item.nested_key) if item.nested_key else item.key
                    if key.startswith(SKIP_PREFIXES):
                        continue
                    row[key] = _item_value(item.value_json)
                if not any(not k.startswith("_") and k not in STEP_ONLY for k in row):
                    continue  # a row of timers only (TRL's profiling/… between steps)
                if "_step" not in row and rec.history.HasField("step"):
                    row["_step"] = rec.history.step.num
                rows.append(row)
            elif kind == "run" and rec.run.display_name:
                self.run = rec.run.display_name
            elif kind == "exit":
                self._ended = True
        frames, skipped = frames_from_metrics(rows)
        return frames, skipped + self._reader.bad - bad_before

    def load(self) -> tuple[list[Frame], int]:
        try:
            frames, skipped = self._records()
        except OSError as exc:
            raise ValidationError(f"cannot read {self.file}: {exc.strerror}", context={"path": str(self.file)}) from exc
        self._last_step = frames[-1].step if frames else None
        return frames, skipped

    def poll(self) -> tuple[list[Frame], int, bool]:
        try:
            frames, skipped = self._records()
        except (OSError, ValidationError):
            return [], 0, False
        return frames, skipped, False

    def ended(self) -> bool:
        return self._ended

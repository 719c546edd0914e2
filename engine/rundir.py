"""Run-directory I/O, in one low module: where runs live (``$CARL_HOME/runs/<run_id>/``), their ids and how a
prefix resolves, their JSON files (written atomically; ``meta.json`` read-modify-written under a lock) and their
checkpoints. The run store (engine.runs), the trainer and the model resolver (engine.models) all read and write
run directories through here; nothing here imports the trainer or the store. The layout is documented in
engine/runs.py."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Callable

from engine.errors import RunNotFound, ValidationError
from engine.home import CarlHome

TERMINAL = ("completed", "failed", "stopped")
HEARTBEAT_S = 2.0
PIPELINE_FILE = "pipeline.json"  # train --send-it runs (engine/trainer/pipeline.py)


def stale_after() -> float:
    try:
        return float(os.environ.get("CARL_HEARTBEAT_STALE_S", "60"))
    except ValueError:
        return 60.0


def runs_root(home: CarlHome | None = None) -> Path:
    return (home or CarlHome.from_env()).runs


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def update_meta(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Read-modify-write meta.json under a lock (the worker's heartbeat and its main thread both write)."""
    from filelock import FileLock

    path = Path(run_dir) / "meta.json"
    with FileLock(str(path) + ".lock"):
        meta = read_json(path)
        meta.update(fields)
        write_json(path, meta)
    return meta


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def run_ids(root: Path) -> list[str]:
    """The runs under ``root`` (directories holding a meta.json), sorted."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file())


def resolve_id(root: Path, ref: str) -> str:
    """The run id ``ref`` names under ``root``: itself, or the one run it is a prefix of. None: ``carl.run.not_found``;
    several: ``carl.validation``."""
    ids = run_ids(root)
    if ref in ids:
        return ref
    matches = [i for i in ids if i.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RunNotFound(f"no run {ref!r}", context={"run": ref})
    raise ValidationError(f"run {ref!r} is ambiguous ({len(matches)} runs match)",
                          hint="Give more characters of the run id.", context={"matches": matches[:10]})


def last_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    """(step, directory) of the newest resumable checkpoint (one with TRL's trainer_state.json), or None."""
    ck = Path(run_dir) / "checkpoints"
    best = None
    for d in ck.glob("checkpoint-*") if ck.is_dir() else []:
        try:
            step = int(d.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if (d / "trainer_state.json").is_file() and (best is None or step > best[0]):
            best = (step, d)
    return best


def model_checkpoints(run_dir: Path) -> dict[int, Path]:
    """step → directory of every checkpoint holding a model or an adapter (what infer and eval can load)."""
    ck = Path(run_dir) / "checkpoints"
    out: dict[int, Path] = {}
    for c in ck.glob("checkpoint-*") if ck.is_dir() else []:
        try:
            step = int(c.name.split("-", 1)[1])
        except (IndexError, ValueError):
            continue
        if (c / "config.json").is_file() or (c / "adapter_config.json").is_file():
            out[step] = c
    return out


# ---- processes (a run's pid and its start time, read from /proc)
def proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int | None, start: str | None = None) -> bool:
    """True when ``pid`` is a live (non-zombie) process, and the same process when ``start`` is known."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start


def truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite ``path`` keeping the complete lines ``keep`` accepts; return how many were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(d, dict) and keep(d):
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
    tmp.replace(path)
    return dropped


def last_frame_step(run_dir: Path) -> int:
    """The step of the last complete frame in ``frames.jsonl`` (0 when none), reading only the file's tail."""
    try:
        with open(Path(run_dir) / "frames.jsonl", "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            lines = fh.read().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError, TypeError):
            continue
    return 0

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
from typing import Any

from engine.errors import RunNotFound, ValidationError
from engine.home import CarlHome


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

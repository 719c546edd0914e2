"""Remote job records: ``CARL_HOME/jobs/<run_id>.json``, one per submitted job, so ``run list`` and
``jobs list`` can show remote runs without touching the network.

A record never holds a secret (tokens are read from the environment at each call). Writes are atomic
(temp file + rename). ``cost_so_far`` is computed when read:

    cost_so_far = price_per_hour × gpu_count × billed_hours,
    billed_hours = (ended (or now, while not finished) − running since) / 3600

where "running since" is when the backend says the job began running (HF Jobs, managed) or, for RunPod, the
submit time (pods bill from creation). A job never seen running costs 0.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from engine.errors import RunNotFound, ValidationError
from engine.home import CarlHome

TERMINAL = ("completed", "failed", "stopped")


def _root(home: CarlHome | Path | str | None) -> Path:
    if home is None:
        home = CarlHome.from_env()
    root = home.root if isinstance(home, CarlHome) else Path(home)
    return root / "jobs"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id(backend: str, key: str, now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{backend}-{stamp}-{key[:6]}"


def save(rec: dict[str, Any], home: CarlHome | Path | str | None = None) -> Path:
    root = _root(home)
    root.mkdir(parents=True, exist_ok=True)
    rec = dict(rec)
    rec["updated_ts"] = time.time()
    path = root / f"{rec['run_id']}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
    return path


def update(run_id: str, mutate: Callable[[dict[str, Any]], None],
           home: CarlHome | Path | str | None = None) -> dict[str, Any]:
    """Read-modify-write one record under a per-record file lock, re-reading it first, so a status poll and a
    log follower (threads or processes) never overwrite each other's fields."""
    from filelock import FileLock

    root = _root(home)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{run_id}.lock"), timeout=30):
        rec = load(run_id, home)
        mutate(rec)
        save(rec, home)
    return rec


def _load_all(home: CarlHome | Path | str | None) -> list[dict[str, Any]]:
    root = _root(home)
    out = []
    if not root.is_dir():
        return out
    for p in sorted(root.glob("*.json")):
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a torn or foreign file is skipped, never fatal
        if isinstance(rec, dict) and rec.get("run_id"):
            out.append(rec)
    return out


def load(ref: str, home: CarlHome | Path | str | None = None) -> dict[str, Any]:
    """The record whose run id or backend id equals ``ref``, else the one whose run id or backend id starts with
    it. ``carl.run.not_found`` (exit 2) when none; ``carl.validation`` when the prefix is ambiguous."""
    recs = _load_all(home)
    exact = [r for r in recs if ref in (r.get("run_id"), r.get("remote_id"))]
    if len(exact) == 1:
        return exact[0]
    pref = [r for r in recs if str(r.get("run_id", "")).startswith(ref) or str(r.get("remote_id", "")).startswith(ref)]
    if len(pref) == 1:
        return pref[0]
    if not pref:
        raise RunNotFound(f"no remote job {ref!r}", hint="List them with `carl --batch jobs list`.",
                          context={"ref": ref})
    raise ValidationError(f"{ref!r} matches {len(pref)} jobs", hint="Give more of the id.",
                          context={"ref": ref, "matches": [r["run_id"] for r in pref][:10]})


def find_by_key(key: str, home: CarlHome | Path | str | None = None) -> dict[str, Any] | None:
    for r in _load_all(home):
        if r.get("idempotency_key") == key:
            return r
    return None


def cost_so_far(rec: dict[str, Any], now: float | None = None) -> float:
    start = rec.get("running_since_ts")
    if start is None:
        return 0.0
    end = rec.get("ended_ts")
    if end is None:
        end = (now if now is not None else time.time()) if rec.get("status") not in TERMINAL else rec.get("updated_ts")
    hours = max(0.0, float(end or start) - float(start)) / 3600
    price = rec.get("cost_per_hour")
    if price is None:
        price = float(rec.get("price_per_hour") or 0.0) * int(rec.get("gpu_count") or 1)
    return round(float(price) * hours, 4)


def summary(rec: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The ``run list`` / ``jobs list`` row for a record."""
    return {"run_id": rec["run_id"], "status": rec.get("status", "unknown"), "backend": rec.get("backend"),
            "started_at": rec.get("started_at"), "last_step": rec.get("last_step"),
            "cost_so_far": cost_so_far(rec, now), "remote_id": rec.get("remote_id"), "flavor": rec.get("flavor"),
            "estimated_usd": rec.get("estimated_usd"), "url": rec.get("url")}


def list_jobs(home: CarlHome | Path | str | None = None, *, now: float | None = None) -> list[dict[str, Any]]:
    """Remote jobs of this CARL_HOME, oldest first: ``[{"run_id", "status", "backend", "started_at",
    "last_step", "cost_so_far", "remote_id", "flavor", "estimated_usd", "url"}, …]``. No network."""
    recs = sorted(_load_all(home), key=lambda r: (r.get("submitted_ts") or 0, r["run_id"]))
    return [summary(r, now) for r in recs]

"""A remote job's local run: ``CARL_HOME/runs/<run_id>/`` (the job's carl run id), kept as the job streams.

``jobs submit`` creates it (``config.yaml`` — the resolved config the job trains with — and a ``meta.json``
with ``backend`` set to the job's backend, so the run store never mistakes it for a dead local worker).
``jobs logs --follow`` and the jobs panel feed it every line the job prints: frame lines are appended to
``frames.jsonl`` (as stored frames: without ``type``/``run_id``/``elapsed_s``), event lines to
``events.jsonl``, and the job's ``done`` line sets the status. A follow that starts over (HF replays a job's
logs from the beginning) appends nothing twice: frames at or below the last stored step and events already
stored are skipped. ``run pull`` later replaces these files with the ones the job uploaded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from engine.home import CarlHome

STATUS = {"queued": "created", "unknown": "created", "running": "running", "completed": "completed",
          "failed": "failed", "stopped": "stopped"}


def _event_key(e: dict[str, Any]) -> str:
    """What makes an event the same one again. A checkpoint's path counts by its last part only: ``run pull``
    points it at this machine (engine.remote.sync.localize), and a later replay still names the container's."""
    key = {k: e.get(k) for k in ("name", "step", "phase")}
    if isinstance(e.get("path"), str):
        key["path"] = Path(e["path"]).name
    return json.dumps(key, sort_keys=True, default=str)


class LocalMirror:
    def __init__(self, run_id: str, home: CarlHome | None = None):
        self.home = home or CarlHome.from_env()
        self.run_id = run_id
        self.dir = self.home.run_dir(run_id)
        self._last_step: int | None = None
        self._events: set[str] | None = None

    @property
    def exists(self) -> bool:
        return (self.dir / "meta.json").is_file()

    def create(self, rec: dict[str, Any], config_yaml: str) -> Path:
        from engine.runs import write_json

        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "checkpoints").mkdir(exist_ok=True)
        (self.dir / "config.yaml").write_text(config_yaml, encoding="utf-8")
        write_json(self.dir / "meta.json", {
            "run_id": self.run_id, "status": STATUS.get(rec.get("status") or "unknown", "created"),
            "backend": rec["backend"], "pid": None, "started_at": rec.get("submitted_ts"), "ended_at": None,
            "last_step": 0, "config_path": rec.get("config_path"), "created_at": time.time(),
            "remote": {"job": rec.get("remote_id"), "output_repo": rec.get("output_repo")}})
        return self.dir

    def set_status(self, job_status: str, **fields: Any) -> None:
        if not self.exists:
            return
        from engine.runs import update_meta

        status = STATUS.get(job_status, "created")
        extra = {"ended_at": time.time()} if status in ("completed", "failed", "stopped") else {}
        update_meta(self.dir, status=status, **extra, **fields)

    # ---- the stream
    def _stored_step(self) -> int:
        if self._last_step is None:
            from engine.runs import RunStore

            self._last_step = RunStore._last_frame_step(self.dir)  # 0 when none
            if not (self.dir / "frames.jsonl").is_file():
                self._last_step = -1
        return self._last_step

    def _stored_events(self) -> set[str]:
        if self._events is None:
            self._events = set()
            path = self.dir / "events.jsonl"
            if path.is_file():
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(e, dict):
                        self._events.add(_event_key(e))
        return self._events

    def feed(self, obj: dict[str, Any]) -> str | None:
        """Store one parsed JSON line the job printed; returns what it was (frame/event/done) or None."""
        if not self.exists or not isinstance(obj, dict):
            return None
        kind = obj.get("type")
        if kind == "frame" and isinstance(obj.get("step"), int):
            if obj["step"] <= self._stored_step():
                return None
            from engine.frames import Frame

            d = {k: v for k, v in obj.items() if k not in ("type", "run_id", "elapsed_s")}
            try:
                frame = Frame.from_dict(d)
            except (TypeError, ValueError):
                return None
            self._append("frames.jsonl", frame.to_dict() | {"timestamp": frame.timestamp or time.time()})
            self._last_step = frame.step
            return "frame"
        if kind == "event" and obj.get("name"):
            e = {k: v for k, v in obj.items() if k not in ("type", "run_id")}
            key = _event_key(e)
            if key in self._stored_events():
                return None
            self._append("events.jsonl", e)
            self._events.add(key)  # type: ignore[union-attr]
            if e.get("name") == "gate_open":
                from engine.runs import update_meta

                update_meta(self.dir, gate_opened_at=e.get("step"))
            return "event"
        if kind == "done" and obj.get("status") in ("completed", "failed", "stopped"):
            fields = {"eval": obj["eval"]} if isinstance(obj.get("eval"), dict) else {}
            if obj.get("error"):
                fields["error"] = obj["error"]
            self.set_status(obj["status"], **fields)
            return "done"
        return None

    def _append(self, name: str, d: dict[str, Any]) -> None:
        from engine.frames import FrameWriter

        w = FrameWriter(self.dir / name)
        try:
            w.write(d)
        finally:
            w.close()

    def note_step(self, step: int) -> None:
        if self.exists:
            from engine.runs import update_meta

            update_meta(self.dir, last_step=step, heartbeat=time.time())


def parse_json_line(line: str) -> dict[str, Any] | None:
    s = line.strip()
    if not s.startswith("{"):
        return None
    try:
        obj = json.loads(s)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def mirror_path(run_id: str, home: CarlHome | None = None) -> Path:
    return (home or CarlHome.from_env()).run_dir(run_id)

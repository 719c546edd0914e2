"""RunStore: local training runs under ``$CARL_HOME/runs/<run_id>/``.

A run directory is the single source of truth::

    meta.json       status, pid, heartbeat, started_at/ended_at, last_step, error, eval (written atomically)
    config.yaml     the resolved config the worker trains with
    plan.json       the resolved plan (what --dry-run prints)
    frames.jsonl    one Frame per logging step (engine.frames)
    events.jsonl    gate_open / checkpoint / eval / … events, one JSON object per line
    checkpoints/    TRL checkpoints (checkpoint-<step>/, with carl_cascade.json)
    final/          the trained model (after completion)
    stdout.log      the worker's stdout+stderr
    ranks/          several processes: rank-<n>.json / rank-<n>.exit per rank (engine.trainer.supervisor)
    accelerate.yaml several CUDA processes: the accelerate config the ranks were launched with
    stop.request    present when a graceful stop was asked

Status: ``created`` → ``running`` → ``completed`` | ``failed`` | ``stopped``. A ``running`` run whose worker
process is gone (or whose heartbeat is older than ``CARL_HEARTBEAT_STALE_S``, default 60 s) reads as
``failed`` — and is recorded so when the process is provably gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from engine.errors import CARLError, RunNotFound, ValidationError
from engine.home import CarlHome

REPO_ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ meta
# run-directory I/O lives in engine/rundir.py (one low module the store, the trainer and engine.models share)
from engine.rundir import (  # noqa: E402,F401  (the store's names for them)
    HEARTBEAT_S, PIPELINE_FILE, TERMINAL, last_checkpoint, last_frame_step, new_run_id, pid_alive, proc_start,
    read_json, stale_after, truncate_jsonl, update_meta, write_json)
from engine.rundir import proc_start as _proc_start  # noqa: E402,F401
from engine.ledger import ledger_record  # noqa: E402,F401
from engine.trainer.launch import needs_supervisor, supervisor_command, worker_command  # noqa: E402,F401
from engine.trainer.pipeline_files import prepare_pipeline_resume  # noqa: E402,F401



class JsonlTail:
    """Incremental reader of a JSONL file: complete lines only (a torn tail waits for its newline)."""

    def __init__(self, path: Path, offset: int = 0):
        self.path, self.offset = Path(path), offset

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in data[: end + 1].splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if isinstance(d, dict):
                out.append(d)
        return out


# ------------------------------------------------------------------------------------------ store
class RunStore:
    def __init__(self, home: CarlHome | None = None):
        self.home = home or CarlHome.from_env()

    @property
    def root(self) -> Path:
        return self.home.runs

    def run_dir(self, run_id: str) -> Path:
        return self.home.run_dir(run_id)  # validated there (carl.run.invalid_id)

    # ---- create / resolve
    def create(self, config_yaml: str, plan: dict[str, Any], *, config_path: str | None = None) -> str:
        self.home.ensure()
        run_id = new_run_id()
        d = self.run_dir(run_id)
        while d.exists():
            run_id = new_run_id()
            d = self.run_dir(run_id)
        d.mkdir(parents=True)
        (d / "checkpoints").mkdir()
        (d / "config.yaml").write_text(config_yaml, encoding="utf-8")
        write_json(d / "plan.json", plan)
        write_json(d / "meta.json", {"run_id": run_id, "status": "created", "backend": "local", "pid": None,
                                     "started_at": None, "ended_at": None, "last_step": 0,
                                     "config_path": config_path, "created_at": time.time()})
        return run_id

    def ids(self) -> list[str]:
        from engine.rundir import run_ids

        return run_ids(self.root)

    def resolve(self, ref: str) -> str:
        from engine.rundir import resolve_id

        return resolve_id(self.root, ref)

    # ---- status
    def meta(self, run_id: str) -> dict[str, Any]:
        """meta.json with the effective status (a dead or silent worker reads as failed)."""
        d = self.run_dir(run_id)
        meta = read_json(d / "meta.json")
        if not meta:
            raise RunNotFound(f"run {run_id!r} has no readable meta.json", context={"run": run_id})
        if meta.get("status") == "running" and meta.get("backend", "local") == "local":  # remote: as last seen
            alive = pid_alive(meta.get("pid"), meta.get("pid_start"))
            beat = meta.get("heartbeat") or meta.get("started_at") or 0
            stale = time.time() - beat > stale_after()
            if not alive or stale:
                reason = "the worker process is gone (no heartbeat)" if not alive else \
                    f"no heartbeat for {time.time() - beat:.0f}s"
                meta = dict(meta, status="failed", error=meta.get("error") or reason)
                if not alive:  # provably dead: record it
                    meta = update_meta(d, status="failed", error=meta["error"],
                                       ended_at=meta.get("ended_at") or beat)
                    ledger_record("run.fail", {"run_id": run_id, "reason": reason})
        meta["last_step"] = max(meta.get("last_step") or 0, self._last_frame_step(d))
        return meta

    @staticmethod
    def _last_frame_step(d: Path) -> int:
        return last_frame_step(d)

    def show(self, ref: str) -> dict[str, Any]:
        run_id = self.resolve(ref)
        d = self.run_dir(run_id)
        meta = self.meta(run_id)
        try:
            import yaml

            config = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = None
        out = {"run_id": run_id, "status": meta.get("status"), "backend": meta.get("backend", "local"),
               "pid": meta.get("pid"), "run_dir": str(d), "started_at": meta.get("started_at"),
               "ended_at": meta.get("ended_at"), "last_step": meta.get("last_step", 0), "config": config,
               "world_size": int(meta.get("world_size") or 1)}
        for k in ("error", "eval", "max_steps", "gate_opened_at", "heartbeat", "strategy", "launcher", "pipeline",
                  "pushed_revision"):
            if meta.get(k) is not None:
                out[k] = meta[k]
        ck = last_checkpoint(d)
        out["last_checkpoint"] = ck[0] if ck else None
        return out

    def list(self) -> list[dict[str, Any]]:
        out = []
        for run_id in reversed(self.ids()):
            try:
                m = self.meta(run_id)
            except RunNotFound:
                continue
            out.append({"run_id": run_id, "status": m.get("status"), "backend": m.get("backend", "local"),
                        "started_at": m.get("started_at"), "last_step": m.get("last_step", 0)})
        return out

    # ---- processes
    def worker_command(self, run_id: str, *, gpus: int = 1, resume: bool = False) -> list[str]:
        return worker_command(str(self.run_dir(run_id)), gpus=gpus, resume=resume)

    def spawn(self, run_id: str, *, gpus: int = 1, resume: bool = False, owned: bool = False) -> int:
        """Start the run's process (its own session). ``owned``: the run belongs to this process (``train``
        without ``--detach``): when this process is gone — killed, even with SIGKILL — the run stops (grace, then
        its processes are killed) instead of going on unseen."""
        d = self.run_dir(run_id)
        from engine.worker_env import worker_environment  # an allowlist: no chat/RunPod/managed keys (issue 29)

        env = worker_environment(d)
        env.pop("CARL_RUN_OWNER", None)
        if owned:
            env["CARL_RUN_OWNER"] = f"{os.getpid()}:{_proc_start(os.getpid()) or ''}"
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        if not env.get("TRACKIO_DIR"):  # trackio reads it once, at import: its store lives with the runs
            env["TRACKIO_DIR"] = str(self.home.root / "trackio")
        (d / "stop.request").unlink(missing_ok=True)
        log = open(d / "stdout.log", "ab")
        try:
            proc = subprocess.Popen(self._launch_command(run_id, gpus=gpus, resume=resume), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True, cwd=os.getcwd())
        finally:
            log.close()
        now = time.time()
        fields: dict[str, Any] = {"status": "running", "pid": proc.pid, "pid_start": _proc_start(proc.pid),
                                  "heartbeat": now, "ended_at": None, "error": None, "error_code": None,
                                  "backend": "local"}  # a pulled remote run resumed here now runs here
        if not resume:
            fields["started_at"] = now
        update_meta(d, **fields)
        self._procs[proc.pid] = proc  # keep the handle so the child is reaped, never a zombie
        return proc.pid

    _procs: dict[int, subprocess.Popen] = {}

    def _launch_command(self, run_id: str, *, gpus: int = 1, resume: bool = False) -> list[str]:
        """The worker itself, or — when the run's config may ask for several processes — its supervisor
        (engine.trainer.supervisor), which starts the ranks and ends them together."""
        try:
            import yaml

            cfg = yaml.safe_load((self.run_dir(run_id) / "config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, ValueError):
            cfg = {}
        if needs_supervisor(cfg):
            return supervisor_command(str(self.run_dir(run_id)), resume=resume)
        return worker_command(str(self.run_dir(run_id)), resume=resume)  # one process, whatever `gpus` says

    def stop(self, ref: str, *, wait: float = 0.0) -> dict[str, Any]:
        """Ask the worker to stop gracefully: it finishes the step, checkpoints and exits ``stopped``."""
        run_id = self.resolve(ref)
        d = self.run_dir(run_id)
        meta = self.meta(run_id)
        if meta.get("status") in TERMINAL or meta.get("status") == "created":
            return {"run_id": run_id, "status": meta.get("status"), "stopped": False}
        if (meta.get("backend") or "local") != "local":  # no worker here to ask: the job is the backend's
            raise ValidationError(f"run {run_id} runs on {meta['backend']}, not on this machine",
                                  hint=f"Stop its job: `carl --batch jobs stop {run_id}` (or x on the jobs panel).",
                                  context={"run": run_id, "backend": meta["backend"]})
        (d / "stop.request").write_text(str(time.time()), encoding="utf-8")
        pid = meta.get("pid")
        if pid and pid_alive(pid, meta.get("pid_start")):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.time() + wait
        while wait and time.time() < deadline:
            meta = self.meta(run_id)
            if meta.get("status") in TERMINAL:
                break
            self._reap()
            time.sleep(0.2)
        return {"run_id": run_id, "status": meta.get("status"), "stopped": meta.get("status") in TERMINAL}

    def wait_exit(self, run_id: str, timeout: float = 30.0) -> bool:
        """After a run's terminal status: wait (at most ``timeout`` s) for its process — the worker, or the
        supervisor with its launcher and ranks — to be gone, so the command that started it leaves nothing
        behind. True when it is gone."""
        meta = read_json(self.run_dir(run_id) / "meta.json")
        pid = meta.get("pid")
        proc = self._procs.get(pid) if pid else None
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc is not None and proc.poll() is not None:
                self._procs.pop(pid, None)
                return True
            if proc is None and not pid_alive(pid, meta.get("pid_start")):
                return True
            time.sleep(0.1)
        return False

    def _reap(self) -> None:
        for pid, proc in list(self._procs.items()):
            if proc.poll() is not None:
                self._procs.pop(pid, None)

    @classmethod
    def reap(cls) -> list[int]:
        """Collect every finished child this process spawned (any RunStore), so none stays a zombie while a
        long-lived caller (the workbench) goes on; the pids still running."""
        for pid, proc in list(cls._procs.items()):
            if proc.poll() is not None:
                cls._procs.pop(pid, None)
        return list(cls._procs)

    def prepare_resume(self, ref: str) -> tuple[str, int]:
        """Check a run can resume and cut frames/events after its last checkpoint (no duplicates)."""
        run_id = self.resolve(ref)
        d = self.run_dir(run_id)
        meta = self.meta(run_id)
        if meta.get("status") == "running":
            raise ValidationError(f"run {run_id} is still running", hint="Attach to it with `run attach`.",
                                  context={"run": run_id})
        if meta.get("status") == "completed":
            raise ValidationError(f"run {run_id} already completed", context={"run": run_id})
        if (d / PIPELINE_FILE).is_file():  # train --send-it: restart at the stage (and checkpoint) where it stopped
            step = prepare_pipeline_resume(d)
            update_meta(d, resumed_from=step)
            return run_id, step
        ck = last_checkpoint(d)
        if ck is None:
            raise ValidationError(f"run {run_id} has no checkpoint to resume from",
                                  hint="Start a new run; checkpoints are written every grpo.save_steps and on stop.",
                                  context={"run": run_id})
        step = ck[0]
        truncate_jsonl(d / "frames.jsonl", lambda f: int(f.get("step", 0)) <= step)
        truncate_jsonl(d / "events.jsonl", lambda e: int(e.get("step", 0) or 0) <= step)
        update_meta(d, last_step=step, resumed_from=step)
        return run_id, step

    # ---- streaming
    def follow(self, ref: str, *, replay: bool = True, poll: float = 0.25,
               should_stop: Callable[[], bool] | None = None) -> Iterator[dict[str, Any]]:
        """Frames and events as contract dicts (``type`` frame/event), then one ``done``. ``replay`` starts at the
        beginning of the history; otherwise at its current end."""
        run_id = self.resolve(ref)
        d = self.run_dir(run_id)
        frames, events = JsonlTail(d / "frames.jsonl"), JsonlTail(d / "events.jsonl")
        if not replay:
            for t in (frames, events):
                t.offset = t.path.stat().st_size if t.path.exists() else 0
        started = read_json(d / "meta.json").get("started_at") or time.time()
        while True:
            meta = self.meta(run_id)
            terminal = meta.get("status") in TERMINAL
            for e in events.read():
                yield {"type": "event", "run_id": run_id, **{k: v for k, v in e.items() if k != "type"}}
            for f in frames.read():
                yield frame_line(run_id, f, started)
            if terminal:
                # drain what the worker wrote just before it finished
                for e in events.read():
                    yield {"type": "event", "run_id": run_id, **{k: v for k, v in e.items() if k != "type"}}
                for f in frames.read():
                    yield frame_line(run_id, f, started)
                done = {"type": "done", "run_id": run_id, "status": meta["status"], "run_dir": str(d)}
                if meta.get("error"):
                    done["error"] = meta["error"]
                if meta.get("error_code") and meta.get("status") == "failed":
                    done["error_code"] = meta["error_code"]
                if meta.get("eval"):
                    done["eval"] = meta["eval"]
                yield done
                return
            if should_stop is not None and should_stop():
                return
            self._reap()
            time.sleep(poll)


FRAME_KEYS = ("step", "phi", "entropy", "reward_mean", "task_reward", "carl_reward", "gate", "loss", "lr")


def frame_line(run_id: str, f: dict[str, Any], started: float) -> dict[str, Any]:
    """A stored frame as the contract's ``{"type": "frame", …}`` line (contract keys first, then the rest)."""
    out: dict[str, Any] = {"type": "frame", "run_id": run_id}
    for k in FRAME_KEYS:
        out[k] = f.get(k)
    ts = f.get("timestamp")
    out["elapsed_s"] = round(ts - started, 3) if isinstance(ts, (int, float)) else None
    for k, v in f.items():
        if k not in out and k != "timestamp":
            out[k] = v
    return out

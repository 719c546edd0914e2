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

TERMINAL = ("completed", "failed", "stopped")
HEARTBEAT_S = 2.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def stale_after() -> float:
    try:
        return float(os.environ.get("CARL_HEARTBEAT_STALE_S", "60"))
    except ValueError:
        return 60.0


def ledger_record(action: str, payload: dict[str, Any]) -> None:
    """Record an action in the ledger. Never lets bookkeeping kill a run: failures are reported on stderr."""
    from engine.ledger import record

    try:
        record(action, payload)
    except CARLError as exc:
        sys.stderr.write(f"carl: ledger: {action} not recorded: {exc.message} ({exc.hint})\n")


# ------------------------------------------------------------------------------------------ processes
def _proc_start(pid: int) -> str | None:
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


# ------------------------------------------------------------------------------------------ meta
# run-directory I/O lives in engine/rundir.py (one low module the store, the trainer and engine.models share)
from engine.rundir import last_checkpoint, new_run_id, read_json, update_meta, write_json  # noqa: E402,F401


def _truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> int:
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


PIPELINE_FILE = "pipeline.json"  # train --send-it runs (engine/trainer/pipeline.py)


def needs_supervisor(cfg_dict: dict[str, Any]) -> bool:
    """Cheap (no torch): could this saved config need more than one process? Then the run starts through its
    supervisor (``python -m engine.trainer.supervisor``), which decides."""
    c = (cfg_dict or {}).get("compute") or {}
    return int(c.get("processes") or 1) > 1 or int(c.get("nodes") or 1) > 1 or \
        (int(c.get("gpus") or 1) > 1 and c.get("device") != "cpu")


def supervisor_command(run_dir: str, *, resume: bool = False, node_rank: int | None = None) -> list[str]:
    """The process a multi-process run is (engine/trainer/launch.py): it prepares, starts and watches the ranks."""
    return [sys.executable, "-m", "engine.trainer.supervisor", run_dir] + (["--resume"] if resume else []) + \
        (["--node-rank", str(node_rank)] if node_rank is not None else [])


def worker_command(run_dir: str, *, gpus: int = 1, resume: bool = False) -> list[str]:
    """The exact worker command: ``python -m engine.trainer.worker RUN_DIR``, or through ``accelerate launch``
    (TRL's multi-GPU path) when ``gpus > 1``."""
    tail = ["-m", "engine.trainer.worker", run_dir] + (["--resume"] if resume else [])
    if gpus > 1:
        acc = Path(sys.executable).parent / "accelerate"
        return [str(acc) if acc.exists() else "accelerate", "launch", "--multi_gpu", "--num_processes",
                str(gpus)] + tail
    return [sys.executable] + tail


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
        path = d / "frames.jsonl"
        try:
            with open(path, "rb") as fh:
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
        _truncate_jsonl(d / "frames.jsonl", lambda f: int(f.get("step", 0)) <= step)
        _truncate_jsonl(d / "events.jsonl", lambda e: int(e.get("step", 0) or 0) <= step)
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


def prepare_pipeline_resume(run_dir: Path) -> int:
    """A ``--send-it`` run: reset the first unfinished stage to ``waiting`` and cut what it wrote after its last
    checkpoint; returns the step it restarts from (its checkpoint's, else 0). Raises when nothing can resume."""
    run_dir = Path(run_dir)
    state = read_json(run_dir / PIPELINE_FILE)
    todo = [s for s in state.get("stages", []) if s["status"] not in ("done", "skipped")]
    if not todo:
        raise ValidationError(f"pipeline run {run_dir.name} has every stage done", context={"run": run_dir.name})
    st = todo[0]
    if st.get("verdict") == "fail":
        raise ValidationError(f"stage {st['name']} of run {run_dir.name} failed its check: {st.get('error')}",
                              hint="A check's verdict does not change on resume: start a new run.",
                              context={"run": run_dir.name, "stage": st["name"]})
    name, step = st["name"], 0
    if name in ("sft", "grpo"):
        ck = last_checkpoint(run_dir / "sft" if name == "sft" else run_dir)
        step = ck[0] if ck else 0
    _truncate_jsonl(run_dir / "events.jsonl",
                    lambda e: e.get("stage") != name or (name in ("sft", "grpo") and int(e.get("step") or 0) <= step
                                                         and e.get("name") not in ("stage_start", "stage_end")))
    if name == "grpo":
        _truncate_jsonl(run_dir / "frames.jsonl", lambda f: int(f.get("step", 0)) <= step)
    st.update(status="waiting", error=None, resumed_from=step)
    write_json(run_dir / PIPELINE_FILE, state)
    update_meta(run_dir, pipeline=[{k: s.get(k) for k in ("name", "status", "key", "key_name")}
                                   for s in state["stages"]])
    return step


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

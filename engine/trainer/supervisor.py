"""The supervisor of a multi-process run: ``python -m engine.trainer.supervisor RUN_DIR [--resume] [--node-rank K]``.

Several processes run under :class:`Supervisor`, the process the
run store records as the run's pid. It makes the process group one unit: every rank writes
``ranks/rank-<n>.json`` when it starts and ``ranks/rank-<n>.exit`` when it finishes normally; a rank that is gone
without its exit file (``kill -9``, OOM killer, a crash) ends every other process of the run (SIGKILL to the
whole tree: the supervisor is a child subreaper, so nothing escapes it) and the run becomes ``failed``. A rank
whose supervisor is gone exits by itself (its watchdog thread). SIGTERM to the supervisor (``run stop``) asks for
the graceful stop through ``stop.request``, which all ranks agree on at the same step.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from engine.trainer.dist import RANK_DIR
from engine.trainer.launch import (OWNER_ENV, SUPERVISOR_ENV, _owner, accelerate_config, launcher, node_command,
                                   world_size)


# ------------------------------------------------------------------------------------------ process tree
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:  # pragma: no cover - no /proc (not Linux): the launcher's own teardown has to do
        return kids
    for p in entries:
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(p.name))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to every descendant of ``pid`` (not ``pid`` itself); return their pids."""
    pids = descendants(pid)
    for p in pids:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    return pids


# ------------------------------------------------------------------------------------------ supervisor
class _StopBeforeStart(Exception):
    """A stop (``run stop``, Ctrl-C, the owner gone) while the run was still being prepared."""


class Supervisor:
    """Starts this node's ranks through the launcher and makes them live and die together (module docstring)."""

    def __init__(self, run_dir: Path, resume: bool = False, poll: float = 0.2, node_rank: int | None = None):
        self.run_dir, self.resume, self.poll, self.node_rank = Path(run_dir), resume, poll, node_rank
        self.ranks = self.run_dir / RANK_DIR
        self.mine: range = range(0, 1 << 30)  # the global ranks this node starts (set in main)
        self.started = False  # the launcher runs
        self.stop_at: float | None = None  # monotonic time a stop was asked (signal, or the owner gone)
        self.owner = _owner()

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] supervisor: {msg}", flush=True)

    def event(self, e: dict[str, Any]) -> None:
        from engine.frames import FrameWriter

        w = FrameWriter(self.run_dir / "events.jsonl")
        try:
            w.write({"step": 0, **e})
        finally:
            w.close()

    def _dead_rank(self) -> str | None:
        """Why the run is broken: a rank gone without its exit file (killed), else a rank that failed by itself
        (its exit file has the error), else a rank the launcher ended (it records the signal)."""
        from engine.rundir import pid_alive, read_json

        dead = []
        failed = [read_json(f) for f in self.ranks.glob("rank-*.exit")]
        failed = sorted((x for x in failed if x.get("rank") in self.mine and x.get("status") == "failed"),
                        key=lambda x: x.get("ended_at") or 0)
        if failed:  # the first rank to fail says why (the others typically fail on the broken collective)
            first = failed[0]
            dead.append((1, f"rank {first.get('rank')} failed: {first.get('error') or 'no error recorded'}"))
        for f in sorted(self.ranks.glob("rank-*.json")):
            info = read_json(f)
            if info.get("rank") not in self.mine:  # another node's rank (a shared run directory)
                continue
            pid = info.get("pid")
            if not pid or (self.ranks / f"{f.stem}.exit").exists() or pid_alive(pid, info.get("pid_start")):
                continue
            if (self.ranks / f"{f.stem}.exit").exists():  # it finished just now
                continue
            how = f" after signal {info['signal']}" if info.get("signal") else ""
            dead.append((2 if info.get("signal") else 0, f"{f.stem.replace('-', ' ')} (pid {pid}) is gone without "
                                                         f"finishing{how}"))
        return sorted(dead)[0][1] if dead else None

    # ---- the watchdog: progress of each rank (engine.trainer.worker writes ranks/rank-<n>.progress)
    def _progress(self, launched: float) -> list[tuple[float, int, str, bool]]:
        """(seconds since the last progress, rank, what it was doing, waiting on another rank) per unfinished
        rank of this node."""
        from engine.rundir import read_json

        out, now = [], time.time()
        for k in self.mine:
            if k >= self._world or (self.ranks / f"rank-{k}.exit").exists():
                continue
            p = read_json(self.ranks / f"rank-{k}.progress")
            if p.get("t"):
                out.append((now - float(p["t"]), k, str(p.get("doing") or "?"), bool(p.get("waiting"))))
                continue
            started = self.ranks / f"rank-{k}.json"
            t = started.stat().st_mtime if started.exists() else launched
            out.append((now - t, k, "starting (imports, the process group)", False))
        return out

    def _hung(self, limit: float, launched: float) -> tuple[str, dict[str, Any]] | None:
        """``carl.run.hung``: a rank (not waiting on another) without progress for ``limit`` seconds, or every rank
        waiting that long. Stack dumps first (SIGUSR1 → faulthandler into ranks/rank-<n>.stack)."""
        prog = self._progress(launched)
        stale = [p for p in prog if p[0] > limit and not p[3]]  # a rank in one of carl's collectives waits on
        if not stale and prog and all(p[0] > limit for p in prog):  # another: stuck only when every rank is
            stale = prog
        if not stale:
            return None
        from engine.rundir import read_json

        pids = {}
        for k in self.mine:
            info = read_json(self.ranks / f"rank-{k}.json")
            if info.get("pid"):
                pids[k] = int(info["pid"])
                try:
                    os.kill(pids[k], signal.SIGUSR1)
                except OSError:
                    pass
        time.sleep(1.5)  # the dumps are written by each rank's own faulthandler
        states = {k: _proc_state(pids.get(k)) for k in pids}

        def blame(p: tuple[float, int, str, bool]) -> tuple[int, int, float]:
            # a rank that cannot run (stopped, gone, a zombie) first; then one that was not in a collective; then
            # the one whose progress is oldest (the others wait on it in the next collective)
            cannot = states.get(p[1]) in ("stopped (SIGSTOP)", "stopped by a tracer", "gone", "zombie")
            return (1 if cannot else 0, 0 if p[3] else 1, p[0])

        age, rank, doing, _ = max(stale, key=blame)
        state = states.get(rank)
        stacks = sorted(str(p.relative_to(self.run_dir)) for p in self.ranks.glob("rank-*.stack")
                        if p.stat().st_size > 0)
        others = "; ".join(f"rank {k}: {d} ({a:.0f}s ago)" for a, k, d, _ in sorted(prog, key=lambda p: p[1])
                           if k != rank)
        msg = (f"rank {rank} made no progress for {age:.0f}s (compute.hang_timeout_s {limit:g}); it was {doing}"
               + (f"; process state {state}" if state else "") + (f"; {others}" if others else "")
               + (f"; stacks in {', '.join(stacks)}" if stacks else ""))
        return msg, {"name": "hung", "rank": rank, "doing": doing, "age_s": round(age, 1), "state": state,
                     "stacks": stacks, "ranks": [{"rank": k, "doing": d, "age_s": round(a, 1), "waiting": w}
                                                 for a, k, d, w in sorted(prog, key=lambda p: p[1])]}

    def _ask_stop(self, why: str) -> None:
        if self.stop_at is None:
            self.stop_at = time.monotonic()
            self.log(why)
        try:
            (self.run_dir / "stop.request").write_text(str(time.time()), encoding="utf-8")
        except OSError:
            pass

    def main(self) -> int:
        import subprocess
        import threading

        import yaml

        from engine.config import validate_dict
        from engine.errors import CARLError
        from engine.ledger import ledger_record
        from engine.rundir import HEARTBEAT_S, TERMINAL, pid_alive, read_json, update_meta
        from engine.trainer.dist import set_child_subreaper

        set_child_subreaper()
        cfg = validate_dict(yaml.safe_load((self.run_dir / "config.yaml").read_text(encoding="utf-8")),
                            source=str(self.run_dir / "config.yaml"))
        node_rank = cfg.compute.node_rank if self.node_rank is None else self.node_rank
        node = node_command(cfg, str(self.run_dir), node_rank, resume=self.resume)
        n = world_size(cfg)
        self._world = n
        k_per = n // cfg.compute.nodes
        self.mine = range(node_rank * k_per, (node_rank + 1) * k_per)
        main_node = node_rank == 0
        kind = launcher(cfg)
        hang_s, grace_s = float(cfg.compute.hang_timeout_s or 0), float(cfg.compute.stop_grace_s)

        def on_signal(signum, frame):  # run stop / Ctrl-C: the ranks agree on the step and checkpoint
            self._ask_stop(f"signal {signum}: asking the ranks to stop (killed after {grace_s:g}s)")
            if not self.started:
                raise _StopBeforeStart()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if main_node:
            update_meta(self.run_dir, world_size=n, strategy=cfg.compute.strategy if n > 1 else None,
                        launcher=kind, supervisor_pid=os.getpid(), heartbeat=time.time())

        # ---- prepare what the ranks load, before any starts (engine/trainer/prepare.py), beating meanwhile
        beating = threading.Event()

        def beat() -> None:
            while not beating.wait(HEARTBEAT_S):
                if main_node:
                    try:
                        update_meta(self.run_dir, heartbeat=time.time())
                    except OSError:
                        pass
                if self.owner and not pid_alive(*self.owner) and self.stop_at is None:
                    os.kill(os.getpid(), signal.SIGTERM)  # the main thread stops the preparation

        threading.Thread(target=beat, daemon=True).start()
        try:
            from engine.rundir import PIPELINE_FILE
            from engine.trainer.prepare import prepare

            got = prepare(cfg, pipeline=(self.run_dir / PIPELINE_FILE).is_file(), log=self.log,
                          on_event=self.event if main_node else (lambda e: None))
            self.log("prepared: " + "; ".join(got))
        except _StopBeforeStart:
            beating.set()
            if main_node:
                update_meta(self.run_dir, status="stopped", ended_at=time.time(), heartbeat=time.time(),
                            error="stopped while the run was being prepared (before any rank started)")
            return 0
        except Exception as exc:  # noqa: BLE001 - the run fails saying why; the ranks never start
            beating.set()
            code = exc.code if isinstance(exc, CARLError) else None
            error = f"preparing the run failed: {exc.message if isinstance(exc, CARLError) else exc}"
            self.log(error)
            if main_node:
                update_meta(self.run_dir, status="failed", error=error.split("\n")[0][:500], error_code=code,
                            ended_at=time.time(), heartbeat=time.time())
                ledger_record("run.fail", {"run_id": self.run_dir.name, "status": "failed", "error": error,
                                           "world_size": n})
            return 1
        beating.set()

        if kind == "accelerate":  # every node writes the same file (atomically): no node waits for another
            tmp = self.run_dir / f".accelerate.yaml.{os.getpid()}.tmp"
            tmp.write_text(yaml.safe_dump(accelerate_config(cfg), sort_keys=False), encoding="utf-8")
            tmp.replace(self.run_dir / "accelerate.yaml")
        self.ranks.mkdir(exist_ok=True)
        for k in self.mine:  # a resumed run starts this node's ranks afresh
            for suffix in ("json", "exit", "progress", "stack"):
                (self.ranks / f"rank-{k}.{suffix}").unlink(missing_ok=True)
        self.log(f"world size {n} ({kind}, node {node_rank} of {cfg.compute.nodes}): {node['launch']}")
        env = {**os.environ, **node["env"], SUPERVISOR_ENV: str(os.getpid())}
        env.pop(OWNER_ENV, None)
        # the launcher dies with this process (PR_SET_PDEATHSIG, set by an exec prefix: no preexec_fn in a
        # threaded process); its ranks are children of this subreaper either way
        self.started = True
        proc = subprocess.Popen([sys.executable, "-m", "engine.trainer.dist", "--pdeathsig", "--"] + node["command"],
                                env=env, stdin=subprocess.DEVNULL)
        launched = time.time()
        failure, code, forced = None, None, False
        beat_t = time.monotonic()
        while True:
            try:
                rc = proc.wait(timeout=self.poll)
            except subprocess.TimeoutExpired:
                rc = None
            if main_node and time.monotonic() - beat_t > HEARTBEAT_S and not (self.ranks / "rank-0.json").exists():
                beat_t = time.monotonic()  # the ranks are still starting (imports): rank 0 beats once it runs
                update_meta(self.run_dir, heartbeat=time.time())
            if rc is not None:
                if rc != 0:
                    failure = self._dead_rank()
                break
            failure = self._dead_rank()
            if failure:
                break
            if self.owner and self.stop_at is None and not pid_alive(*self.owner) and \
                    read_json(self.run_dir / "meta.json").get("status") not in TERMINAL:  # not a finished run's exit
                self._ask_stop(f"the carl process that started the run (pid {self.owner[0]}) is gone: stopping the "
                               f"run (killed after {grace_s:g}s)")
            if self.stop_at is not None and time.monotonic() - self.stop_at > grace_s:
                forced = True
                self.log(f"the ranks did not stop within compute.stop_grace_s ({grace_s:g}s): ending them")
                break
            if hang_s and self.stop_at is None:
                hung = self._hung(hang_s, launched)
                if hung:
                    failure, code = hung[0], "carl.run.hung"
                    if main_node:
                        self.event(hung[1])
                    break
        if failure or forced:
            if failure:
                self.log(f"{failure}: ending every process of the run")
            killed = kill_tree(os.getpid())
            proc.wait()
            self._reap_all()
            self.log(f"ended {len(killed)} processes")
        leftover = kill_tree(os.getpid())  # nothing may outlive the run (a rank a launcher left behind)
        self._reap_all()
        if not main_node:  # the main node's supervisor owns the run's status
            self.log(f"node {node_rank}: " + (failure or f"launcher exited with status {proc.returncode}"))
            return 1 if failure or proc.returncode else 0
        meta = read_json(self.run_dir / "meta.json")
        status = meta.get("status")
        if forced and not failure and status not in TERMINAL:
            from engine.rundir import last_checkpoint

            ck = last_checkpoint(self.run_dir)
            error = (f"the ranks did not stop within compute.stop_grace_s ({grace_s:g}s) and were killed; "
                     + (f"resume goes on from checkpoint {ck[0]}" if ck else "no checkpoint to resume from"))
            update_meta(self.run_dir, status="stopped", error=error, ended_at=time.time(), heartbeat=time.time())
            ledger_record("run.stop", {"run_id": self.run_dir.name, "status": "stopped", "last_step":
                                       meta.get("last_step"), "error": error, "world_size": n})
            self.log(f"run stopped: {error}")
            return 0
        if failure or status not in TERMINAL or (proc.returncode != 0 and status != "completed"):
            error = failure or f"the launcher exited with status {proc.returncode}"
            if status in TERMINAL and not failure:
                error = meta.get("error") or error
            update_meta(self.run_dir, status="failed", error=error, ended_at=time.time(), heartbeat=time.time(),
                        **({"error_code": code} if code else {}))
            # the one run.fail block of a multi-process run (ranks leave it to the supervisor: exactly once)
            ledger_record("run.fail", {"run_id": self.run_dir.name, "status": "failed", "last_step":
                                       meta.get("last_step"), "error": error, "world_size": n,
                                       **({"code": code} if code else {})})
            self.log(f"run failed: {error}" + (f" ({len(leftover)} leftover processes ended)" if leftover else ""))
            return 1
        return 0

    @staticmethod
    def _reap_all(timeout: float = 60.0) -> None:
        """Reap every child (re-parented orphans included) until none is left."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.05)


def _proc_state(pid: int | None) -> str | None:
    """``/proc/<pid>/stat``'s state letter, spelled out (``T`` = stopped, ``S`` = sleeping, …)."""
    if not pid:
        return None
    try:
        st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
    return {"R": "running", "S": "sleeping", "D": "in uninterruptible I/O", "T": "stopped (SIGSTOP)",
            "t": "stopped by a tracer", "Z": "zombie"}.get(st, st)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m engine.trainer.supervisor RUN_DIR [--resume] [--node-rank K]", file=sys.stderr)
        return 2
    node_rank = int(argv[argv.index("--node-rank") + 1]) if "--node-rank" in argv[1:-1] else None
    return Supervisor(Path(argv[0]), resume="--resume" in argv[1:], node_rank=node_rank).main()


if __name__ == "__main__":
    raise SystemExit(main())

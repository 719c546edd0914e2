"""A training run as its own process: ``python -m engine.trainer.worker RUN_DIR [--resume]``.

It owns its run directory (engine.runs): heartbeat in meta.json every couple of seconds, frames and events as
it trains, checkpoints under checkpoints/, the final model under final/. SIGTERM/SIGINT or a ``stop.request``
file ask for a graceful stop: the current step finishes, a checkpoint is written, status becomes ``stopped``.
Under several processes (engine.trainer.supervisor) only the main process (global rank 0) writes meta, frames,
events, the ledger and the cascade state; every rank writes its own ``ranks/rank-<n>.json`` (pid, world size,
the step its gate opened) and ``ranks/rank-<n>.exit`` when it finishes, for the supervisor.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from engine.ledger import ledger_record
from engine.rundir import HEARTBEAT_S, last_checkpoint, update_meta
from engine.trainer import dist
from engine.trainer.launch import SUPERVISOR_ENV

RANK0 = dist.is_main()


class Worker:
    def __init__(self, run_dir: Path, resume: bool = False):
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name
        self.resume = resume
        self.stop_requested = threading.Event()
        self.done = threading.Event()
        self.step = 0
        self.meta_lock = threading.Lock()
        self._events = None
        self._telemetry = None  # engine.platform.telemetry.Forwarder, only with telemetry consent
        self.sync = None  # engine.remote.sync.OutputSync when train.output_repo is set (rank 0)
        self.gate: tuple[bool, str] | None = None  # the eval gate on the final model
        self.cfg = None
        self.rank = dist.env_rank()
        self.supervisor = int(os.environ.get(SUPERVISOR_ENV, "0") or 0) or None
        self.rank_info: dict[str, Any] = {}
        self.stage: str | None = None  # a pipeline run's current stage (engine/trainer/pipeline.py)
        self.sync_finished = False  # the pipeline's push stage made the last upload
        self._progress_at = 0.0
        self._progress_doing: str | None = None
        self._stack_file = None  # ranks/rank-<n>.stack: faulthandler's dump on SIGUSR1 (the supervisor's watchdog)

    # ---- bookkeeping
    def log(self, msg: str) -> None:
        from engine.errors import redact_text  # stdout.log never holds a secret (issue 29)

        who = f" rank {self.rank}:" if self.supervisor else ""
        print(f"[{time.strftime('%H:%M:%S')}]{who} {redact_text(str(msg))}", flush=True)
        self.progress(msg[:200])

    def progress(self, doing: str, *, waiting: bool = False) -> None:
        """``ranks/rank-<n>.progress``: this rank's main thread got somewhere (several processes only; the
        supervisor's watchdog reads it). ``waiting``: blocked on another rank on purpose (a broadcast)."""
        if not self.supervisor:
            return
        now = time.time()
        if doing == self._progress_doing and now - self._progress_at < 1.0 and not waiting:
            return
        self._progress_at, self._progress_doing = now, doing
        from engine.rundir import write_json

        try:
            write_json(self.run_dir / dist.RANK_DIR / f"rank-{self.rank}.progress",
                       {"t": now, "doing": doing, "step": self.step, "stage": self.stage, "waiting": waiting})
        except OSError:
            pass

    def agree(self, what: str, value: Any) -> Any:
        """Rank 0's ``value`` on every rank: a decision made once (a collective with several processes)."""
        if dist.env_world_size() > 1:
            self.progress(("sending" if RANK0 else "waiting for rank 0: ") + what, waiting=True)
        out = dist.broadcast(value)
        self.progress(f"agreed: {what}")
        return out

    def barrier(self, what: str) -> None:
        self.progress(f"waiting for every rank: {what}", waiting=True)
        dist.barrier()
        self.progress(f"every rank done: {what}")

    def rank_file(self, suffix: str = "json", **fields: Any) -> None:
        """``ranks/rank-<n>.<suffix>``: this rank's own record (several processes only)."""
        if not self.supervisor:
            return
        from engine.rundir import proc_start as _proc_start, write_json

        self.rank_info.update(fields)
        self.rank_info.update(rank=self.rank, pid=os.getpid(), pid_start=_proc_start(os.getpid()))
        d = self.run_dir / dist.RANK_DIR
        d.mkdir(exist_ok=True)
        write_json(d / f"rank-{self.rank}.{suffix}", self.rank_info)

    def watchdog(self) -> None:
        """A rank whose supervisor is gone ends itself: no orphans (the watchdog of the ranks themselves is the
        supervisor's, engine.trainer.supervisor)."""
        from engine.rundir import pid_alive

        while not self.done.wait(HEARTBEAT_S / 2):
            if not pid_alive(self.supervisor):
                print(f"rank {self.rank}: the supervisor (pid {self.supervisor}) is gone; exiting", flush=True)
                os._exit(1)

    def should_stop_all(self) -> bool:
        """The stop decision every rank takes at the same step (a collective with several processes)."""
        if dist.any_rank(self.should_stop()):
            self.stop_requested.set()
        return self.stop_requested.is_set()

    def meta(self, **fields: Any) -> None:
        if RANK0:
            with self.meta_lock:
                update_meta(self.run_dir, **fields)

    def heartbeat(self) -> None:
        from engine.rundir import pid_alive
        from engine.trainer.launch import _owner

        owner = None if self.supervisor else _owner()  # several processes: the supervisor watches the owner
        while not self.done.wait(HEARTBEAT_S):
            if owner and not self.stop_requested.is_set() and not pid_alive(*owner):
                self.log(f"the carl process that started the run (pid {owner[0]}) is gone: stopping the run")
                self.stop_requested.set()
            try:
                self.meta(heartbeat=time.time(), last_step=self.step)
            except OSError:
                pass

    def should_stop(self) -> bool:
        if (self.run_dir / "stop.request").exists():
            self.stop_requested.set()
        return self.stop_requested.is_set()

    def event(self, e: dict[str, Any]) -> None:
        self.progress(f"event {e.get('name')}" + (f" at step {e['step']}" if e.get("step") else ""))
        if e.get("name") == "gate_open":  # every rank records where its own gate opened
            self.rank_file(gate_opened_at=e.get("step"))
            if not RANK0:
                self.log(f"gate opened at step {e.get('step')} ({e.get('mode')})")
        if not RANK0:
            return
        from engine.frames import FrameWriter

        if self._events is None:
            self._events = FrameWriter(self.run_dir / "events.jsonl")
        e = {k: v for k, v in e.items() if k != "type"}
        e.setdefault("step", self.step)
        if self.stage:
            e.setdefault("stage", self.stage)
        self._events.write(e)
        if self._telemetry is not None:
            self._telemetry.emit(str(e.get("name")), e)
        name = e.get("name")
        if name == "gate_open":
            self.meta(gate_opened_at=e.get("step"))
            self.log(f"gate opened at step {e.get('step')} ({e.get('mode')}): stage B, CARL on")
        action = {"gate_open": "gate.open", "checkpoint": "checkpoint", "eval": "eval",
                  "collapse_onset": "collapse.onset"}.get(name)
        if action:
            ledger_record(action, {"run_id": self.run_id, **e})
        if name == "checkpoint" and self.sync is not None and e.get("path") and e.get("stage") in (None, "grpo"):
            self.sync.checkpoint(int(e.get("step") or 0), Path(e["path"]))
        if name == "checkpoint" and e.get("stage") == "grpo":
            from engine.trainer.pipeline import maybe_hold

            maybe_hold("grpo", int(e.get("step") or 0), self.should_stop)

    # ---- the run
    def run(self) -> str:
        import yaml

        from engine.config import validate_dict

        cfg = validate_dict(yaml.safe_load((self.run_dir / "config.yaml").read_text(encoding="utf-8")),
                            source=str(self.run_dir / "config.yaml"))
        self.cfg = cfg
        if RANK0:
            from engine.platform.telemetry import for_run

            self._telemetry = for_run(cfg, self.run_id)
            if self._telemetry is not None:
                self._telemetry.emit("run.start", {"resume": self.resume, "project": cfg.project.name,
                                                   "max_steps": cfg.grpo.max_steps})
            if cfg.train.output_repo:
                from engine.remote.sync import OutputSync

                # uploads off the training loop: queued, retried, joined at the end (engine/remote/sync.py)
                self.sync = OutputSync.from_config(cfg, self.run_dir, log=self.log, meta=self.meta,
                                                   on_event=self.event, background=True)
        if dist.env_world_size() > 1:  # the group first: every decision after this is made once and broadcast
            from engine.trainer.grpo import resolve_device

            self.progress("joining the process group")
            dist.init_group(resolve_device(cfg))
        from engine.trainer.pipeline import is_pipeline

        if is_pipeline(self.run_dir):  # train --send-it: sft → gate → grpo → eval → push (engine/trainer/pipeline.py)
            from engine.trainer.pipeline import Pipeline

            return Pipeline(self, cfg).run()
        return self.grpo(cfg, resume=self.resume)[0]

    def grpo(self, cfg, *, resume: bool, before: dict[str, Any] | None = None) -> tuple[str, dict[str, Any] | None]:
        """The cascade GRPO run (the whole run, or the pipeline's grpo stage): (status, the held-out eval after).
        ``before``: the held-out eval of the starting model when already known (the pipeline's sft stage)."""
        from engine.cascade import Cascade
        from engine.trainer import grpo
        from engine.trainer.callbacks import CASCADE_FILE, make_callback
        from engine.trainer.data import load_rows
        from engine.trainer.evalgate import evaluate

        after = None
        # sharded models (ZeRO-3, FSDP) generate only with every rank taking part; replicas evaluate on rank 0
        evaluates = RANK0 or cfg.compute.strategy in ("zero3", "fsdp")
        device = grpo.resolve_device(cfg)
        self.log(f"run {self.run_id}: device {device}, model {cfg.model.name_or_path}, "
                 f"{cfg.grpo.max_steps} steps{' (resume)' if resume else ''}")
        if self.supervisor:  # the supervisor built what the ranks load (engine/trainer/prepare.py)
            from engine.trainer.prepare import check_prepared

            check_prepared(cfg)
        model, tok = grpo.load_model_and_tokenizer(cfg, device, log=self.log)
        train_rows, eval_rows = load_rows(cfg, cwd=Path.cwd())
        from engine.provenance import run_start  # what reproduces the run: versions, git, data, model, seed

        if RANK0:
            ledger_record("run.start", {"run_id": self.run_id, "resume": resume, "project": cfg.project.name,
                                        "model": cfg.model.name_or_path, "dataset": cfg.dataset.source,
                                        "max_steps": cfg.grpo.max_steps, "cascade": cfg.cascade.mode,
                                        "world_size": dist.env_world_size(),
                                        **run_start(cfg, model, train_rows, eval_rows, cwd=Path.cwd())})
        n_eval = len(eval_rows) if cfg.dataset.source == "builtin:addition" else cfg.eval.n_samples
        if self.should_stop():
            return "stopped", None
        ck = last_checkpoint(self.run_dir) if resume else None
        if resume and ck is None:
            raise RuntimeError("no checkpoint to resume from")
        if not resume and eval_rows and evaluates:
            before = before or evaluate(model, tok, eval_rows, cfg, n=n_eval)
            self.log(f"before: held-out {before['task_metric_name']} {before['task_metric']:.3f} "
                     f"(n={before['n']}), phi_mean {before.get('phi_mean')}")
            self.meta(eval={"before": _brief(before)})
            self.event({"name": "eval", "phase": "before", "step": 0, **_brief(before)})
        if not resume and eval_rows and dist.env_world_size() > 1:  # the others wait for rank 0's eval, saying so
            self.barrier("the held-out eval before training")
        metric = grpo.task_metric_name(cfg)
        cascade = Cascade.from_config(cfg, metric)
        if ck is not None and (ck[1] / CASCADE_FILE).is_file():
            cascade.load_state_dict(json.loads((ck[1] / CASCADE_FILE).read_text(encoding="utf-8")))
        self.meta(max_steps=cfg.grpo.max_steps)
        holder: dict[str, Any] = {}

        from engine.trainer.collapse_watch import CollapseWatch

        watch = CollapseWatch(cfg.cascade.on_collapse, on_event=self.event, request_stop=self.stop_requested.set,
                              cascade=cascade, log=self.log)

        if ck is not None and RANK0:  # a resumed run: the monitor first sees the frames it kept (its history)
            from engine.frames import read_frames

            kept = read_frames(self.run_dir / "frames.jsonl")[0] if (self.run_dir / "frames.jsonl").is_file() else []
            kept = [f for f in kept if f.step <= ck[0]]
            earlier = watch.replay(kept)
            self.log(f"collapse watch: replayed {len(kept)} kept frames"
                     + (f" (its alarm at step {earlier['step']} was raised before the resume)" if earlier else ""))

        def on_frame(frame) -> None:
            self.step = frame.step
            watch(frame)

        def decide(step: int) -> None:  # every rank, at every logged step: rank 0's collapse verdict, applied
            self.step = step
            watch.decide(lambda v: self.agree(f"the collapse verdict of step {step}", v))

        tracking = (cfg.tracking.project or cfg.project.name) if cfg.tracking.trackio and RANK0 else None
        callback = make_callback(self.run_dir, state_ref=lambda: holder.get("state"), should_stop=self.should_stop_all,
                                 on_event=self.event, on_frame=on_frame, trackio_project=tracking,
                                 run_name=self.run_id, config=cfg.model_dump(mode="json"),
                                 skip_until=ck[0] if ck else 0, main=RANK0, stage=self.stage, on_decide=decide,
                                 on_progress=self.progress)
        self.progress("building the trainer")
        trainer, state = grpo.build_trainer(cfg, self.run_dir, model, tok, train_rows, cascade,
                                            callbacks=[callback], on_event=self.event)
        self.progress("training")
        holder["state"] = state
        self.rank_file(world_size=dist.world_size(), backend=dist.backend())
        trainer.train(resume_from_checkpoint=str(ck[1]) if ck else None)
        self.step = int(trainer.state.global_step)
        self.rank_file(last_step=self.step, gate_opened_at=cascade.gate.opened_at, gate_closed_at=cascade.closed_at,
                       carl_weight_last=cascade.carl_weight(self.step), world_size=dist.world_size(),
                       backend=dist.backend(), completions_per_step=state.global_n,
                       local_completions_per_step=state.local_n)
        self.log(f"CARL field: {state.capture_hits} batches from generation logits, {state.forward_hits} by forward")
        if self.stop_requested.is_set() and self.step < cfg.grpo.max_steps:
            return "stopped", None
        final = self.run_dir / "final"
        trainer.save_model(str(final))  # every rank (DeepSpeed/FSDP gather the weights); the main one writes
        if RANK0:
            tok.save_pretrained(str(final))
        if eval_rows and evaluates:
            after = evaluate(trainer.model, tok, eval_rows, cfg, n=n_eval)
            self.log(f"after: held-out {after['task_metric_name']} {after['task_metric']:.3f} (n={after['n']}), "
                     f"phi_mean {after.get('phi_mean')}")
            ev = _read_eval(self.run_dir)
            ev["after"] = _brief(after)
            self.meta(eval=ev)
            self.event({"name": "eval", "phase": "after", "step": self.step, **_brief(after)})
            if self.sync is not None:
                from engine.trainer.evalgate import decide

                self.gate = decide(after, cfg.eval, before=(before or {}).get("task_metric"))
        return "completed", after

    def main(self) -> int:
        if self.supervisor:  # one of several processes: the supervisor's pid is the run's pid
            dist.set_parent_death_signal(signal.SIGKILL)  # the launcher gone → this rank gone
            import faulthandler

            (self.run_dir / dist.RANK_DIR).mkdir(exist_ok=True)
            self._stack_file = open(self.run_dir / dist.RANK_DIR / f"rank-{self.rank}.stack", "w")
            faulthandler.register(signal.SIGUSR1, file=self._stack_file, all_threads=True)
            self.rank_file(world_size_env=dist.env_world_size())
            self.progress("starting")
            self.meta(status="running", heartbeat=time.time(), error=None, error_code=None, ended_at=None)
            threading.Thread(target=self.watchdog, daemon=True).start()
        else:
            self.meta(status="running", pid=os.getpid(), heartbeat=time.time(), error=None, error_code=None,
                      ended_at=None)
        threading.Thread(target=self.heartbeat, daemon=True).start()

        def on_signal(signum, frame):
            if self.supervisor:  # the supervisor never signals a rank: this is a teardown, not `run stop`
                print(f"rank {self.rank}: signal {signum}; exiting", flush=True)
                try:
                    self.rank_file(signal=signum)
                except OSError:
                    pass
                os._exit(128 + signum)
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        status, error = "failed", None
        from engine.trainer.pipeline import StageFailed

        try:
            status = self.run()
        except StageFailed as exc:  # a check's verdict (the pipeline logged why), not a crash: no traceback
            error = str(exc).split("\n")[0][:500]
        except BaseException as exc:  # the run failed: say why in meta, full traceback in stdout.log
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}".split("\n")[0][:500]
            if self.stop_requested.is_set():
                status = "stopped"
        self.done.set()
        final = dict(status=status, ended_at=time.time(), last_step=self.step, heartbeat=time.time(), error=error)
        # before the status turns terminal: whoever waits for it finds the upload done (a pipeline's push stage
        # already made this last upload)
        if self.sync is not None and not self.sync_finished:
            from engine.remote.sync import final_policy

            allowed, why = final_policy(self.cfg, self.gate) if status == "completed" else (False, status)
            self.sync.finish(status, final_allowed=allowed, reason=why, meta_fields=final)
        self.meta(**final)
        action = {"completed": "run.complete", "stopped": "run.stop"}.get(status, "run.fail")
        if RANK0 and not (self.supervisor and status == "failed"):  # a failure: the supervisor records it
            ledger_record(action, {"run_id": self.run_id, "status": status, "last_step": self.step,
                                   **({"error": error} if error else {})})
        self.log(f"run {self.run_id}: {status}" + (f" ({error})" if error else ""))
        if self._telemetry is not None:
            self._telemetry.emit(action, {"status": status, "last_step": self.step})
            self.log(self._telemetry.close(timeout=5.0))
        if RANK0:  # the run's blocks are in the local chain; with ledger_forward consent also on the platform
            from engine.platform.forward import after_run

            note = after_run(self.run_dir)
            if note:
                self.log(note)
        self.rank_file("exit", status=status, last_step=self.step, error=error, ended_at=time.time())
        return 0 if status in ("completed", "stopped") else 1


def _brief(m: dict[str, Any]) -> dict[str, Any]:
    from engine.trainer.pipeline import brief

    return brief(m)


def _read_eval(run_dir: Path) -> dict[str, Any]:
    from engine.rundir import read_json

    return dict(read_json(run_dir / "meta.json").get("eval") or {})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m engine.trainer.worker RUN_DIR [--resume]", file=sys.stderr)
        return 2
    return Worker(Path(argv[0]), resume="--resume" in argv[1:]).main()


if __name__ == "__main__":
    _rc = main()
    if os.environ.get(SUPERVISOR_ENV):
        # one of several ranks: everything is written; skip the interpreter's teardown, where torch's gloo group
        # took ~10 s to destroy itself here (the run would read as finished while its processes lingered)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_rc)
    raise SystemExit(_rc)

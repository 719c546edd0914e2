"""A training run as its own process: ``python -m engine.trainer.worker RUN_DIR [--resume]``.

It owns its run directory (engine.runs): heartbeat in meta.json every couple of seconds, frames and events as
it trains, checkpoints under checkpoints/, the final model under final/. SIGTERM/SIGINT or a ``stop.request``
file ask for a graceful stop: the current step finishes, a checkpoint is written, status becomes ``stopped``.
Under ``accelerate launch`` only rank 0 writes the run directory.
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

from engine.runs import HEARTBEAT_S, last_checkpoint, ledger_record, update_meta

RANK0 = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


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

    # ---- bookkeeping
    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def meta(self, **fields: Any) -> None:
        if RANK0:
            with self.meta_lock:
                update_meta(self.run_dir, **fields)

    def heartbeat(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            try:
                self.meta(heartbeat=time.time(), last_step=self.step)
            except OSError:
                pass

    def should_stop(self) -> bool:
        if (self.run_dir / "stop.request").exists():
            self.stop_requested.set()
        return self.stop_requested.is_set()

    def event(self, e: dict[str, Any]) -> None:
        if not RANK0:
            return
        from engine.frames import FrameWriter

        if self._events is None:
            self._events = FrameWriter(self.run_dir / "events.jsonl")
        e = {k: v for k, v in e.items() if k != "type"}
        e.setdefault("step", self.step)
        self._events.write(e)
        name = e.get("name")
        if name == "gate_open":
            self.meta(gate_opened_at=e.get("step"))
            self.log(f"gate opened at step {e.get('step')} ({e.get('mode')}): stage B, CARL on")
        action = {"gate_open": "gate.open", "checkpoint": "checkpoint", "eval": "eval"}.get(name)
        if action:
            ledger_record(action, {"run_id": self.run_id, **e})

    # ---- the run
    def run(self) -> str:
        import yaml

        from engine.cascade import Cascade
        from engine.config import validate_dict
        from engine.trainer import grpo
        from engine.trainer.callbacks import CASCADE_FILE, make_callback
        from engine.trainer.data import load_rows
        from engine.trainer.evalgate import evaluate

        cfg = validate_dict(yaml.safe_load((self.run_dir / "config.yaml").read_text(encoding="utf-8")),
                            source=str(self.run_dir / "config.yaml"))
        ledger_record("run.start", {"run_id": self.run_id, "resume": self.resume, "project": cfg.project.name,
                                    "model": cfg.model.name_or_path, "dataset": cfg.dataset.source,
                                    "max_steps": cfg.grpo.max_steps, "cascade": cfg.cascade.mode})
        device = grpo.resolve_device(cfg)
        self.log(f"run {self.run_id}: device {device}, model {cfg.model.name_or_path}, "
                 f"{cfg.grpo.max_steps} steps{' (resume)' if self.resume else ''}")
        model, tok = grpo.load_model_and_tokenizer(cfg, device, log=self.log)
        train_rows, eval_rows = load_rows(cfg, cwd=Path.cwd())
        n_eval = len(eval_rows) if cfg.dataset.source == "builtin:addition" else cfg.eval.n_samples
        if self.should_stop():
            return "stopped"
        ck = last_checkpoint(self.run_dir) if self.resume else None
        if self.resume and ck is None:
            raise RuntimeError("no checkpoint to resume from")
        if not self.resume and eval_rows:
            before = evaluate(model, tok, eval_rows, cfg, n=n_eval)
            self.log(f"before: held-out {before['task_metric_name']} {before['task_metric']:.3f} "
                     f"(n={before['n']}), phi_mean {before.get('phi_mean')}")
            self.meta(eval={"before": _brief(before)})
            self.event({"name": "eval", "phase": "before", "step": 0, **_brief(before)})
        metric = grpo.task_metric_name(cfg)
        cascade = Cascade.from_config(cfg, metric)
        if ck is not None and (ck[1] / CASCADE_FILE).is_file():
            cascade.load_state_dict(json.loads((ck[1] / CASCADE_FILE).read_text(encoding="utf-8")))
        self.meta(max_steps=cfg.grpo.max_steps)
        holder: dict[str, Any] = {}

        def on_frame(frame) -> None:
            self.step = frame.step

        tracking = (cfg.tracking.project or cfg.project.name) if cfg.tracking.trackio and RANK0 else None
        callback = make_callback(self.run_dir, state_ref=lambda: holder.get("state"), should_stop=self.should_stop,
                                 on_event=self.event, on_frame=on_frame, trackio_project=tracking,
                                 run_name=self.run_id, config=cfg.model_dump(mode="json"),
                                 skip_until=ck[0] if ck else 0)
        trainer, state = grpo.build_trainer(cfg, self.run_dir, model, tok, train_rows, cascade,
                                            callbacks=[callback], on_event=self.event)
        holder["state"] = state
        trainer.train(resume_from_checkpoint=str(ck[1]) if ck else None)
        self.step = int(trainer.state.global_step)
        self.log(f"CARL field: {state.capture_hits} batches from generation logits, {state.forward_hits} by forward")
        if self.stop_requested.is_set() and self.step < cfg.grpo.max_steps:
            return "stopped"
        if RANK0:
            final = self.run_dir / "final"
            trainer.save_model(str(final))
            tok.save_pretrained(str(final))
        if eval_rows:
            after = evaluate(trainer.model, tok, eval_rows, cfg, n=n_eval)
            self.log(f"after: held-out {after['task_metric_name']} {after['task_metric']:.3f} (n={after['n']}), "
                     f"phi_mean {after.get('phi_mean')}")
            ev = _read_eval(self.run_dir)
            ev["after"] = _brief(after)
            self.meta(eval=ev)
            self.event({"name": "eval", "phase": "after", "step": self.step, **_brief(after)})
        return "completed"

    def main(self) -> int:
        self.meta(status="running", pid=os.getpid(), heartbeat=time.time(), error=None, ended_at=None)
        threading.Thread(target=self.heartbeat, daemon=True).start()

        def on_signal(signum, frame):
            self.stop_requested.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        status, error = "failed", None
        try:
            status = self.run()
        except BaseException as exc:  # the run failed: say why in meta, full traceback in stdout.log
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}".split("\n")[0][:500]
            if self.stop_requested.is_set():
                status = "stopped"
        self.done.set()
        self.meta(status=status, ended_at=time.time(), last_step=self.step, heartbeat=time.time(), error=error)
        action = {"completed": "run.complete", "stopped": "run.stop"}.get(status, "run.fail")
        ledger_record(action, {"run_id": self.run_id, "status": status, "last_step": self.step,
                               **({"error": error} if error else {})})
        self.log(f"run {self.run_id}: {status}" + (f" ({error})" if error else ""))
        return 0 if status in ("completed", "stopped") else 1


def _brief(m: dict[str, Any]) -> dict[str, Any]:
    out = {k: m.get(k) for k in ("task_metric_name", "task_metric", "phi_mean", "discontinuity", "coherence",
                                 "cloud", "completion_length", "n")}
    out.update({k: m[k] for k in ("task_completion", "tool_format", "tool_calls_per_task") if k in m})  # agents
    return out


def _read_eval(run_dir: Path) -> dict[str, Any]:
    from engine.runs import read_json

    return dict(read_json(run_dir / "meta.json").get("eval") or {})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m engine.trainer.worker RUN_DIR [--resume]", file=sys.stderr)
        return 2
    return Worker(Path(argv[0]), resume="--resume" in argv[1:]).main()


if __name__ == "__main__":
    raise SystemExit(main())

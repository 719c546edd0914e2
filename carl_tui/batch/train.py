"""`carl --batch train [--config carl.yaml] [--dry-run] [--detach] [--send-it] [--set key.path=value …]`

Streams JSON lines (frame / event / done) while a worker process trains; see docs/train.md."""

from __future__ import annotations

import argparse
from typing import Any

from carl_tui.batch._io import emit, progress


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train with cascade GRPO (streams JSON lines)",
                       description="Start a cascade GRPO run in a worker process and stream its frames. "
                                   "No config and no ./carl.yaml: the built-in tiny CPU demo.")
    p.add_argument("--config", help="carl.yaml (default ./carl.yaml, else the tiny demo)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan as one JSON object; touch nothing")
    p.add_argument("--detach", action="store_true", help="print {run_id, pid, run_dir} and return; the run goes on")
    p.add_argument("--send-it", dest="send_it", action="store_true",
                   help="the whole pipeline in one run: sft → gate → grpo → eval → push (pipeline: in "
                        "carl.yaml; resume with `run resume RUN`)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.runs import RunStore
    from engine.trainer.plan import plan

    cfg, path = load_config(args.config, args.sets)
    store = RunStore()
    the_plan = plan(cfg, path, run_dir=str(store.root / "<run_id>"))
    if getattr(args, "send_it", False):
        from engine.trainer.pipeline import stage_plan

        the_plan["send_it"] = True
        the_plan["pipeline"] = {"stages": stage_plan(cfg)}
    if args.dry_run:
        from engine.trainer.preview import preview

        emit({"dry_run": True, **the_plan, **preview(cfg)})
        return 0
    run_id = store.create(cfg.to_yaml(), the_plan, config_path=str(path) if path else None)
    if the_plan.get("send_it"):
        from engine.trainer.pipeline import init_state

        init_state(store.run_dir(run_id), cfg)
    pid = store.spawn(run_id, gpus=cfg.compute.gpus, owned=not args.detach)
    run_dir = str(store.run_dir(run_id))
    if args.detach:
        emit({"run_id": run_id, "pid": pid, "run_dir": run_dir})
        return 0
    progress(f"carl: run {run_id} started (pid {pid}); Ctrl-C stops it gracefully")
    return stream(store, run_id, replay=True, max_steps=cfg.grpo.max_steps)


def stream(store: Any, run_id: str, *, replay: bool = True, max_steps: int | None = None,
           stop_on_interrupt: bool = True) -> int:
    """Emit the run's lines until it ends. Ctrl-C asks for a graceful stop (checkpoint) and exits 130."""
    try:
        for line in store.follow(run_id, replay=replay):
            emit(line)
            _describe(line, max_steps)
            if line["type"] == "done":
                if stop_on_interrupt:  # the run is ours (train, resume): its processes end before we do
                    store.wait_exit(run_id)
                if line.get("error_code") == "carl.run.hung":  # a typed verdict: JSON on stderr too
                    from engine.errors import RunHung

                    raise RunHung(str(line.get("error")), context={"run": run_id})
                return 0 if line["status"] in ("completed", "stopped") else 1
    except KeyboardInterrupt:
        if stop_on_interrupt:
            progress(f"carl: stopping run {run_id} (finishing the step, writing a checkpoint)…")
            res = store.stop(run_id, wait=_stop_wait(store, run_id))
            emit({"type": "done", "run_id": run_id, "status": res.get("status"),
                  "run_dir": str(store.run_dir(run_id))})
        raise
    return 1


def _stop_wait(store: Any, run_id: str) -> float:
    """How long Ctrl-C waits for the stop: the run's compute.stop_grace_s (after which its processes are
    killed) and a margin."""
    try:
        import yaml

        cfg = yaml.safe_load((store.run_dir(run_id) / "config.yaml").read_text(encoding="utf-8")) or {}
        return float((cfg.get("compute") or {}).get("stop_grace_s") or 60.0) + 30.0
    except (OSError, ValueError, TypeError):
        return 120.0


def _describe(line: dict[str, Any], max_steps: int | None) -> None:
    t = line.get("type")
    if t == "frame":
        of = f"/{max_steps}" if max_steps else ""
        tr = line.get("task_reward")
        phi = line.get("phi")
        progress(f"step {line.get('step')}{of}  task {tr if tr is None else round(tr, 3)}  "
                 f"phi {phi if phi is None else round(phi, 3)}  gate {line.get('gate')}")
    elif t == "event":
        name = line.get("name")
        if name == "eval":
            progress(f"{line.get('phase')}: held-out {line.get('task_metric_name')} "
                     f"{_r(line.get('task_metric'))} (n={line.get('n')}), phi_mean {_r(line.get('phi_mean'))}")
        elif name == "gate_open":
            progress(f"gate opened at step {line.get('step')} ({line.get('mode')}): stage B, CARL on")
        elif name == "stage_start":
            progress(f"stage {line.get('stage')}: running")
        elif name == "stage_end":
            key = f" ({line.get('key_name')} {_r(line.get('key'))})" if line.get("key") is not None else ""
            progress(f"stage {line.get('stage')}: {line.get('status')}{key}"
                     + (f" — {line['error']}" if line.get("error") else ""))
        elif name == "sft":
            val = line.get("val_metric")
            progress(f"sft step {line.get('step')}  loss {_r(line.get('loss'))}"
                     + (f"  validation {_r(val)}" if val is not None else ""))
    elif t == "done":
        ev = line.get("eval") or {}
        b, a = (ev.get("before") or {}).get("task_metric"), (ev.get("after") or {}).get("task_metric")
        if b is not None and a is not None:
            progress(f"held-out accuracy: before {b:.3f} → after {a:.3f} ({a - b:+.3f})")
        progress(f"run {line.get('run_id')}: {line.get('status')}"
                 + (f" ({line['error']})" if line.get("error") else ""))


def _r(v: Any) -> Any:
    return round(v, 3) if isinstance(v, float) else v

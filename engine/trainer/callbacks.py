"""The trainer callback: one Frame per logging step to ``frames.jsonl`` (and trackio), checkpoints with the
cascade state, graceful stop on request."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from engine.frames import Frame, FrameWriter

CASCADE_FILE = "carl_cascade.json"


def _f(logs: dict[str, Any], key: str) -> float | None:
    v = logs.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def frame_from_logs(step: int, logs: dict[str, Any], state, step_time: float | None) -> Frame:
    """Map TRL's logged metrics (+ carl's own ``carl/*``) onto a Frame."""
    rewards = {k.split("/")[1]: float(v) for k, v in logs.items()
               if k.startswith("rewards/") and k.endswith("/mean") and isinstance(v, (int, float))}
    carl_raw = _f(logs, "carl/reward")
    task = rewards.get(state.metric) if state is not None else None
    known = {"loss", "learning_rate", "reward", "reward_std", "kl", "entropy", "frac_reward_zero_std",
             "completions/mean_length", "completions/clipped_ratio", "epoch", "grad_norm"}
    extra = {k: float(v) for k, v in logs.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in known
             and not k.startswith("rewards/") and not k.startswith("carl/")}
    for k in ("grad_norm", "reward_std", "epoch", "carl/crystallization", "carl/weight", "carl/tied_groups",
              "carl/overhead_ms"):
        if isinstance(logs.get(k), (int, float)):
            extra[k] = float(logs[k])
    stage_b = _f(logs, "carl/stage_b")
    if stage_b is not None:
        gate = "B" if stage_b > 0 else "A"
    else:
        gate = state.cascade.stage if state is not None and state.cascade is not None else "A"
    phi = _f(logs, "carl/phi")
    if phi is None:  # CARL off (or not yet run): the same mean Phi from the logged entropy (engine.coherence)
        from engine.coherence import phi_from_mean_entropy

        phi = phi_from_mean_entropy(_f(logs, "entropy"), getattr(state, "vocab_size", None))
    return Frame(
        step=step, phi=phi, entropy=_f(logs, "entropy"), reward_mean=_f(logs, "reward"),
        task_reward=task, carl_reward=carl_raw, rewards=rewards,
        carl_components={k: float(logs[f"carl/{k}"]) for k in ("coherence", "cloud", "discontinuity")
                         if isinstance(logs.get(f"carl/{k}"), (int, float))},
        gate=gate, carl_weight=_f(logs, "carl/weight"), loss=_f(logs, "loss"), lr=_f(logs, "learning_rate"),
        kl=_f(logs, "kl"), completion_length=_f(logs, "completions/mean_length"),
        clipped_ratio=_f(logs, "completions/clipped_ratio"), frac_reward_zero_std=_f(logs, "frac_reward_zero_std"),
        step_time=step_time, timestamp=time.time(), sample=state.sample if state is not None else None,
        samples=_samples(state), extra=extra)


def _samples(state) -> list[dict[str, Any]] | None:
    from engine.trainer.samples import finish

    if state is None or not getattr(state, "samples", None):
        return None
    return finish(state.samples, getattr(state, "task_values", {}) or {}, getattr(state, "task_weights", {}) or {})


def make_callback(run_dir: Path, *, state_ref: Callable[[], Any], should_stop: Callable[[], bool],
                  on_event: Callable[[dict[str, Any]], None], on_frame: Callable[[Frame], None] | None = None,
                  trackio_project: str | None = None, run_name: str | None = None, config: dict | None = None,
                  skip_until: int = 0, main: bool = True, stage: str | None = None,
                  on_decide: Callable[[int], None] | None = None, on_progress: Callable[[str], None] | None = None):
    """Build the TrainerCallback (transformers is imported here, not at module import). With several processes
    every rank has one, but only the ``main`` one writes frames, trackio and the cascade state. ``stage``: a
    pipeline run's stage, written into every frame (engine/trainer/pipeline.py). ``on_decide(step)``: every rank,
    at every logged step, after the main rank's ``on_frame`` (a decision made once and broadcast, e.g. the
    collapse verdict). ``on_progress(what)``: the rank's main thread got somewhere (the supervisor's watchdog)."""
    tick = on_progress or (lambda what: None)
    from transformers import TrainerCallback

    run_dir = Path(run_dir)

    class CarlCallback(TrainerCallback):
        def __init__(self) -> None:
            self.writer = FrameWriter(run_dir / "frames.jsonl") if main else None
            from engine.system import SystemSampler

            self.system = SystemSampler()  # this worker's CPU/RAM and the GPUs, in every frame
            self.step_started: float | None = None
            self.step_times: list[float] = []
            self.trackio = None
            self.tracking_failures: set[str] = set()

        def on_train_begin(self, args, state, control, **kw):
            if trackio_project and main:
                try:
                    import os

                    import trackio
                    from trackio import utils as trackio_utils

                    want = os.environ.get("TRACKIO_DIR")
                    if want and Path(want).expanduser().resolve() != Path(trackio_utils.TRACKIO_DIR).resolve():
                        # trackio fixes its store when first imported; a worker process always matches its env
                        print(f"carl: trackio writes to {trackio_utils.TRACKIO_DIR} (imported before TRACKIO_DIR="
                              f"{want} was set in this process)", flush=True)
                    trackio.init(project=trackio_project, name=run_name, config=config or {}, resume="allow",
                                 embed=False)
                    self.trackio = trackio
                except Exception as exc:  # tracking must never kill a run
                    print(f"carl: trackio disabled: {type(exc).__name__}: {exc}", flush=True)
                    self._tracking_failed("init", exc, int(state.global_step))

        def on_step_begin(self, args, state, control, **kw):
            self.step_started = time.perf_counter()
            tick(f"training step {int(state.global_step) + 1}")

        def on_step_end(self, args, state, control, **kw):
            if self.step_started is not None:
                self.step_times.append(time.perf_counter() - self.step_started)
            tick(f"finished step {int(state.global_step)}")
            if should_stop():
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" not in logs and "reward" not in logs:  # the final train summary, not a step
                return
            step = int(state.global_step)
            if step <= skip_until:
                return
            if self.writer is None:  # not the main process: it takes part in the main one's decisions below
                if on_decide is not None:
                    on_decide(step)
                self._stop_here(control)
                return
            times = self.step_times[-max(1, args.logging_steps):]
            frame = frame_from_logs(step, logs, state_ref(), sum(times) / len(times) if times else None)
            try:
                frame.system = self.system.sample()
            except Exception as exc:  # measuring must never kill a run; the frame says why it has no numbers
                frame.system = {"error": f"{type(exc).__name__}: {exc}"}
            self.writer.write(frame if stage is None else {**frame.to_dict(), "stage": stage})
            if on_frame is not None:
                on_frame(frame)
            if on_decide is not None:
                on_decide(step)
            self._stop_here(control)
            if self.trackio is not None:
                d = frame.to_dict()
                flat = {k: v for k, v in d.items() if isinstance(v, (int, float)) and k not in ("step", "timestamp")}
                flat.update({f"rewards/{k}": v for k, v in frame.rewards.items()})
                flat.update({f"carl/{k}": v for k, v in frame.carl_components.items()})
                flat["gate_b"] = 1.0 if frame.gate == "B" else 0.0
                try:
                    self.trackio.log(flat, step=step)
                except Exception as exc:
                    self._tracking_failed("log", exc, step, once=True)

        def _stop_here(self, control) -> None:
            """A stop asked for by this frame (e.g. cascade.on_collapse=stop fired in ``on_frame``) ends the run at
            this very step: the Trainer saves after on_log, then leaves the loop. ``should_stop`` may be a collective
            (several processes: any rank asked), so every rank calls it here, once per logged step."""
            if on_frame is not None and should_stop():
                control.should_save = True
                control.should_training_stop = True

        def on_save(self, args, state, control, **kw):
            step = int(state.global_step)
            tick(f"saved checkpoint {step}")
            ck = run_dir / "checkpoints" / f"checkpoint-{step}"
            st = state_ref()
            if main and ck.is_dir() and st is not None and st.cascade is not None:
                (ck / CASCADE_FILE).write_text(json.dumps(st.cascade.state_dict()), encoding="utf-8")
            on_event({"name": "checkpoint", "step": step, "path": str(ck)})

        def on_train_end(self, args, state, control, **kw):
            if self.writer is not None:
                self.writer.close()
            if self.trackio is not None:
                try:
                    import contextlib
                    import io

                    said = io.StringIO()  # trackio says "Uploading logs to Trackio" even when it only writes locally
                    with contextlib.redirect_stdout(said):
                        self.trackio.finish()  # flushes what trackio still buffers: a failure may lose metrics
                    kept = [x for x in said.getvalue().splitlines() if x.strip() and "Uploading logs to Trackio" not in x]
                    for line in kept:
                        print(line, flush=True)
                    store = getattr(getattr(self.trackio, "utils", None), "TRACKIO_DIR", None)
                    print(f"carl: trackio metrics saved{f' in {store}' if store else ''}", flush=True)
                except Exception as exc:
                    self._tracking_failed("finish", exc, int(state.global_step))

        def _tracking_failed(self, what: str, exc: Exception, step: int, once: bool = False) -> None:
            """Tracking never kills a run, but a failure is said: in the worker log and as a run event."""
            msg = f"{type(exc).__name__}: {exc}".split("\n")[0][:300]
            print(f"carl: trackio {what} failed at step {step}: {msg}", flush=True)
            if once and what in self.tracking_failures:
                return
            self.tracking_failures.add(what)
            on_event({"name": "tracking_error", "step": step, "op": f"trackio.{what}", "error": msg})

    return CarlCallback()

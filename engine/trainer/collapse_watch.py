"""The live collapse early warning in a training run, and ``cascade.on_collapse``.

The worker feeds each frame to :class:`engine.observe.collapse.CollapseMonitor` (the very detector
``carl --batch observe`` replays). When it fires, a ``collapse_onset`` event (step, since, evidence, action)
goes to events.jsonl, the ledger and the train screen's banner, and the configured action runs:

* ``warn``       — nothing more;
* ``stop``       — a graceful stop (the current step finishes, a checkpoint is written, status ``stopped``);
* ``close_gate`` — the cascade returns to stage A for the rest of the run: CARL adds nothing from the next step
  (a run whose gate never opened is unaffected; the alarm is still reported).

With several processes the monitor runs on rank 0 only (it sees the frames); its verdict is broadcast at the
same logged step on every rank (:meth:`CollapseWatch.decide` with the worker's ``agree``), and every rank applies
the action — each rank's cascade closes at the same step. A resumed run first replays the frames it kept
(:meth:`CollapseWatch.replay`), so the monitor's baseline is the run's start, as in ``observe``'s replay.
"""

from __future__ import annotations

from typing import Any, Callable

from engine.observe.collapse import CollapseMonitor


class CollapseWatch:
    def __init__(self, action: str, *, on_event: Callable[[dict[str, Any]], None],
                 request_stop: Callable[[], None], cascade: Any = None,
                 log: Callable[[str], None] = lambda m: None) -> None:
        self.action, self.on_event, self.request_stop, self.cascade, self.log = (
            action, on_event, request_stop, cascade, log)
        self.monitor = CollapseMonitor()
        self.pending: dict[str, Any] | None = None  # rank 0's verdict on the last frame, until decided

    def replay(self, frames: list[Any]) -> dict[str, Any] | None:
        """Feed a resumed run's kept frames (nothing is reported again: their alarm, if any, is in events.jsonl
        and its action in the checkpoint's cascade state). Returns that earlier alarm, if the replay raised it."""
        alarm = None
        for f in frames:
            alarm = self.monitor.update(f) or alarm
        return None if alarm is None else {"step": alarm.step, "since": alarm.since}

    def __call__(self, frame: Any) -> None:
        """The main rank's frame: the monitor's verdict waits in ``pending`` for :meth:`decide`."""
        alarm = self.monitor.update(frame)
        if alarm is None:
            return
        self.pending = {"step": alarm.step, "since": alarm.since, "message": alarm.message(),
                        "evidence": alarm.evidence}

    def decide(self, agree: Callable[[Any], Any] = lambda v: v) -> dict[str, Any] | None:
        """Every rank, at the same logged step: rank 0's verdict (``agree`` broadcasts it), then its action."""
        verdict, self.pending = agree(self.pending), None
        if verdict is None:
            return None
        self.on_event({"name": "collapse_onset", "step": verdict["step"], "since": verdict["since"],
                       "action": self.action, "message": verdict["message"], "evidence": verdict["evidence"]})
        self.log(f"{verdict['message']} (cascade.on_collapse: {self.action})")
        if self.action == "stop":
            self.request_stop()
        elif self.action == "close_gate" and self.cascade is not None:
            self.cascade.close(verdict["step"] + 1)
        return verdict

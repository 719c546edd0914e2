"""The live collapse early warning in a training run, and ``cascade.on_collapse``.

The worker feeds each frame to :class:`engine.observe.collapse.CollapseMonitor` (the very detector
``carl --batch observe`` replays). When it fires, a ``collapse_onset`` event (step, since, evidence, action)
goes to events.jsonl, the ledger and the train screen's banner, and the configured action runs:

* ``warn``       — nothing more;
* ``stop``       — a graceful stop (the current step finishes, a checkpoint is written, status ``stopped``);
* ``close_gate`` — the cascade returns to stage A for the rest of the run: CARL adds nothing from the next step
  (a run whose gate never opened is unaffected; the alarm is still reported).
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

    def __call__(self, frame: Any) -> None:
        alarm = self.monitor.update(frame)
        if alarm is None:
            return
        self.on_event({"name": "collapse_onset", "step": alarm.step, "since": alarm.since,
                       "action": self.action, "message": alarm.message(), "evidence": alarm.evidence})
        self.log(f"{alarm.message()} (cascade.on_collapse: {self.action})")
        if self.action == "stop":
            self.request_stop()
        elif self.action == "close_gate" and self.cascade is not None:
            self.cascade.close(alarm.step + 1)

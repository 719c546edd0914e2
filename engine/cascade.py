"""The cascade: stage A trains on task rewards only; stage B adds the CARL reward once a gate opens, its weight
warmed up linearly over ``warmup_steps``.

Gates (``cascade.mode`` in carl.yaml) see one metrics dict per training step and open at most once:

* ``fixed``           — opens at step ``fixed_step``.
* ``metric`` (default) / ``percentile`` — **self-calibrating**: keeps the history of the task metric (the mean
  task reward the trainer logs for the watched reward); once at least ``min_steps`` values exist, the threshold
  is their running ``percentile`` (default 0.6, linear interpolation); the gate opens when at least
  ``min_above`` of the last ``window`` values are ≥ the threshold **and** > 0 (so it never opens on a run that
  has earned nothing).
* ``crystallization`` — opens when the sum of the per-step crystallization counts (mean number per completion
  of jumps ΔPhi > the probe's DEFECT_THRESHOLD between neighbouring tokens) over the last ``window`` steps
  reaches ``crystallization_threshold``.
* ``off``             — no gate: CARL is in from step 0 (the "ungated" arm of the ablation).

``evidence`` is reserved for an evidence-based gate (a later issue) and is refused until it exists.

How the CARL reward joins the task reward is :meth:`Cascade.combine` — the one place a different combination
(e.g. a separately scaled, capped CARL advantage) would go.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (``numpy.quantile``'s default), ``q`` in [0, 1]."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class Gate:
    """Base: ``observe(step, metrics)`` returns True exactly once, at the step the gate opens."""

    mode = "base"

    def __init__(self) -> None:
        self.opened_at: int | None = None
        self.last_step: int | None = None
        self.detail: dict[str, Any] = {}

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def observe(self, step: int, metrics: dict[str, float]) -> bool:
        if self.is_open:
            return False
        if self.last_step is not None and step <= self.last_step:  # the same step seen twice: no new evidence
            return False
        self.last_step = step
        if self._check(step, metrics):
            self.opened_at = step
            return True
        return False

    def _check(self, step: int, metrics: dict[str, float]) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "opened_at": self.opened_at, "last_step": self.last_step}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.opened_at = d.get("opened_at")
        self.last_step = d.get("last_step")


class AlwaysOpen(Gate):
    mode = "off"

    def _check(self, step, metrics):
        self.detail = {"reason": "no gate"}
        return True


class FixedGate(Gate):
    mode = "fixed"

    def __init__(self, at_step: int):
        super().__init__()
        self.at_step = at_step

    def _check(self, step, metrics):
        self.detail = {"reason": f"step {step} >= fixed_step {self.at_step}"}
        return step >= self.at_step


class PercentileGate(Gate):
    """The self-calibrating metric gate (see the module docstring)."""

    mode = "metric"

    def __init__(self, metric: str, q: float = 0.6, min_steps: int = 5, window: int = 5, min_above: int = 3):
        super().__init__()
        self.metric, self.q, self.min_steps, self.window, self.min_above = metric, q, min_steps, window, min_above
        self.history: list[float] = []
        self.threshold: float | None = None

    def _check(self, step, metrics):
        value = metrics.get(self.metric)
        if value is None or value != value:  # missing or NaN: no evidence this step
            return False
        self.history.append(float(value))
        if len(self.history) < self.min_steps:
            return False
        self.threshold = percentile(self.history, self.q)
        recent = self.history[-self.window:]
        above = sum(1 for v in recent if v >= self.threshold and v > 0)
        self.detail = {"metric": self.metric, "threshold": self.threshold, "above": above, "window": len(recent),
                       "percentile": self.q}
        return above >= self.min_above

    def state_dict(self):
        return {**super().state_dict(), "history": list(self.history), "threshold": self.threshold}

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.history = list(d.get("history", []))
        self.threshold = d.get("threshold")


class CrystallizationGate(Gate):
    mode = "crystallization"

    def __init__(self, window: int = 5, threshold: float = 1.0, metric: str = "crystallization"):
        super().__init__()
        self.window, self.threshold, self.metric = window, threshold, metric
        self.recent: deque[float] = deque(maxlen=window)

    def _check(self, step, metrics):
        value = metrics.get(self.metric)
        if value is None or value != value:
            return False
        self.recent.append(float(value))
        total = sum(self.recent)
        self.detail = {"metric": self.metric, "window_sum": total, "threshold": self.threshold}
        return total >= self.threshold

    def state_dict(self):
        return {**super().state_dict(), "recent": list(self.recent)}

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.recent = deque(d.get("recent", []), maxlen=self.window)


def make_gate(cascade_cfg, metric: str) -> Gate:
    mode = cascade_cfg.mode
    if mode in ("metric", "percentile"):
        g = PercentileGate(metric, cascade_cfg.percentile, cascade_cfg.min_steps, cascade_cfg.window,
                           cascade_cfg.min_above)
        g.mode = mode
        return g
    if mode == "fixed":
        return FixedGate(cascade_cfg.fixed_step)
    if mode == "crystallization":
        return CrystallizationGate(cascade_cfg.window, cascade_cfg.crystallization_threshold)
    if mode == "off":
        return AlwaysOpen()
    raise ConfigError(f"cascade.mode {mode!r} is not available yet",
                      hint="Use metric (default), percentile, fixed, crystallization or off.",
                      context={"mode": mode})


@dataclass
class GateEvent:
    step: int
    mode: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "event", "name": "gate_open", "step": self.step, "mode": self.mode, **self.detail}


class Cascade:
    """Gate + weight schedule. ``carl_weight(step)`` is 0 in stage A and ramps to ``weight`` in stage B."""

    def __init__(self, gate: Gate, weight: float = 1.0, warmup_steps: int = 0):
        self.gate, self.weight, self.warmup_steps = gate, weight, warmup_steps

    @classmethod
    def from_config(cls, cfg, metric: str) -> "Cascade":
        return cls(make_gate(cfg.cascade, metric), cfg.rewards.carl.weight, cfg.cascade.warmup_steps)

    @property
    def stage(self) -> str:
        return "B" if self.gate.is_open else "A"

    def observe(self, step: int, metrics: dict[str, float]) -> GateEvent | None:
        if self.gate.observe(step, metrics):
            return GateEvent(step, self.gate.mode, dict(self.gate.detail))
        return None

    def carl_weight(self, step: int) -> float:
        if not self.gate.is_open:
            return 0.0
        if self.warmup_steps <= 0:
            return self.weight
        return self.weight * min(1.0, (step - self.gate.opened_at + 1) / self.warmup_steps)

    def combine(self, carl: list[float], step: int) -> list[float]:
        """The CARL term each completion adds to its summed task reward at ``step``."""
        w = self.carl_weight(step)
        return [w * c for c in carl]

    def state_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.state_dict(), "weight": self.weight, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.gate.load_state_dict(d.get("gate", {}))

"""The cascade: stage A trains on task rewards only; stage B adds the CARL reward once a gate opens, its weight
warmed up linearly over ``warmup_steps`` steps (``weight · min(1, (step - opened_at + 1) / warmup_steps)``: a
fraction 1/warmup_steps of the weight on the opening step, all of it ``warmup_steps - 1`` steps later).

Gates (``cascade.mode`` in carl.yaml) see one metrics dict per training step and open at most once:

* ``fixed``           — opens at step ``fixed_step``.
* ``metric`` / ``percentile`` — **self-calibrating**: keeps the history of the task metric (the mean
  task reward the trainer logs for the watched reward); once at least ``min_steps`` values exist, the threshold
  is their running ``percentile`` (default 0.6, linear interpolation); the gate opens when at least
  ``min_above`` of the last ``window`` values are ≥ the threshold **and** > 0 (so it never opens on a run that
  has earned nothing).
* ``crystallization`` — opens when the sum of the per-step crystallization counts (mean number per completion
  of jumps ΔPhi > the probe's DEFECT_THRESHOLD between neighbouring tokens) over the last ``window`` steps
  reaches ``crystallization_threshold``.
* ``evidence`` (the default) — opens only on real, sustained task success: the Wilson score lower bound (z =
  ``evidence_z``, 1.96) of the success rate pooled over the last ``evidence_window`` steps (successes = Σ step
  mean × completions, trials = Σ completions) must exceed ``evidence_floor`` on ``evidence_consecutive``
  consecutive steps. A few lucky successes in a sparse run rarely do that; a sustained rate does. It is a
  heuristic, not a test with a known error rate: one prompt's G completions are not independent and the bound
  is looked at every step. Its false-open rate is measured (bench/evidence_false_open.py, docs/cascade.md).
* ``off``             — no gate: CARL is in from step 0 (the "ungated" arm of the ablation).

How the CARL reward joins the task reward is :meth:`Cascade.combine` (``cascade.combine``):

* ``add``           — every completion adds ``carl_weight · carl``. With TRL's per-group std scaling, in a group
  whose task rewards all tie, CARL's tiny spread becomes the whole unit-size advantage (see docs/cascade.md).
* ``varied_groups`` — CARL only moves completions inside groups whose task rewards vary, and there its centred
  term is scaled down (uniformly, so the CARL ranking is kept) until its largest magnitude is at most
  ``k · σ_task`` with ``k = cap / (1 + c·cap)``, ``c = sqrt(G/(G-1))`` (TRL's Bessel-corrected std over a group
  of G). Then after TRL's normalisation the CARL-driven part of any advantage, ``|d_i| / std(task + d)``, is at
  most ``carl_cap`` — in advantage units (one unit = the group's reward std), not a share of each completion's
  own advantage (see docs/cascade.md); in a tied group every completion gets 0 (exactly: no CARL-driven
  advantage). :func:`check_bound_settings` refuses TRL settings the bound does not hold under. The logged
  ``rewards/carl/mean`` is then the mean term added (tied groups count 0); frames' ``carl_reward`` stays raw.
"""

from __future__ import annotations

import math
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


def wilson_lower(successes: float, trials: float, z: float = 1.96) -> float:
    """Wilson score interval lower bound of a success rate (0 with no trials)."""
    if trials <= 0:
        return 0.0
    p = min(1.0, max(0.0, successes / trials))
    z2 = z * z
    centre = p + z2 / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, (centre - margin) / (1 + z2 / trials))


class EvidenceGate(Gate):
    """Opens when the Wilson lower bound of the windowed success rate beats ``floor`` on ``consecutive`` steps.

    Each step contributes its batch mean of the watched task reward (a success rate for 0/1 rewards; rewards in
    [0, 1] are treated as fractional successes) and its number of completions (``metrics["n"]``, default 1)."""

    mode = "evidence"

    def __init__(self, metric: str, floor: float = 0.1, window: int = 10, consecutive: int = 3, z: float = 1.96):
        super().__init__()
        self.metric, self.floor, self.window, self.consecutive, self.z = metric, floor, window, consecutive, z
        self.recent: deque[tuple[float, float]] = deque(maxlen=window)
        self.streak = 0

    def _check(self, step, metrics):
        value = metrics.get(self.metric)
        if value is None or value != value:
            return False
        n = float(metrics.get("n") or 1.0)
        self.recent.append((min(1.0, max(0.0, float(value))) * n, n))
        succ = sum(s for s, _ in self.recent)
        trials = sum(t for _, t in self.recent)
        lower = wilson_lower(succ, trials, self.z) if len(self.recent) == self.window else 0.0
        self.streak = self.streak + 1 if lower > self.floor else 0
        self.detail = {"metric": self.metric, "threshold": self.floor, "lower_bound": lower,
                       "rate": succ / trials if trials else 0.0, "trials": trials, "streak": self.streak,
                       "window": len(self.recent)}
        return self.streak >= self.consecutive

    def state_dict(self):
        return {**super().state_dict(), "recent": [list(x) for x in self.recent], "streak": self.streak}

    def load_state_dict(self, d):
        super().load_state_dict(d)
        self.recent = deque((tuple(x) for x in d.get("recent", [])), maxlen=self.window)
        self.streak = int(d.get("streak", 0))


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
    if mode == "evidence":
        return EvidenceGate(metric, cascade_cfg.evidence_floor, cascade_cfg.evidence_window,
                            cascade_cfg.evidence_consecutive, cascade_cfg.evidence_z)
    raise ConfigError(f"cascade.mode {mode!r} is not available",
                      hint="Use evidence, metric, percentile, fixed, crystallization or off.",
                      context={"mode": mode})


@dataclass
class GateEvent:
    step: int
    mode: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "event", "name": "gate_open", "step": self.step, "mode": self.mode, **self.detail}


def _std(xs: list[float]) -> float:
    """Bessel-corrected std (TRL's ``nanstd`` on a group), 0 for fewer than two values."""
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def carl_free_group(task: list[float], cap: float) -> bool:
    """True when ``varied_groups`` gives this group's completions no CARL term: its task rewards tie, one of
    them is unscorable (NaN), or the cap is 0. The one rule both the combination and ``carl/tied_groups`` use."""
    finite = [x for x in task if x == x]
    return len(finite) < len(task) or _std(finite) <= 1e-8 or cap <= 0


def combine_varied_groups(carl: list[float], task: list[float], group: int, weight: float,
                          cap: float) -> list[float]:
    """The ``varied_groups`` combination (module docstring): per consecutive group of ``group`` completions."""
    out: list[float] = []
    for g0 in range(0, len(carl), group):
        c = [weight * x for x in carl[g0: g0 + group]]
        t = [x for x in task[g0: g0 + group]]
        mean_c = sum(c) / len(c)
        if carl_free_group(t, cap):
            out.extend([0.0] * len(c))  # tied (or unscorable) group: exactly no CARL-driven advantage
            continue
        sigma = _std(t)
        n = len(c)
        k = cap / (1 + math.sqrt(n / (n - 1)) * cap)
        d = [x - mean_c for x in c]
        biggest = max(abs(x) for x in d)
        scale = min(1.0, k * sigma / biggest) if biggest > 0 else 0.0
        out.extend(mean_c + scale * x for x in d)
    return out


# What the varied_groups bound assumes of TRL's GRPOTrainer (1.16): rewards summed with their weights, then
# centred and divided by the std of each group of num_generations (Bessel-corrected, + 1e-4). Under "batch"
# scaling or per-function normalisation ("normalize_then_sum") the bound does not hold. The loss type (dapo, grpo,
# ...) only weights tokens of an advantage already computed, so the bound on the advantage does not depend on it.
BOUND_SETTINGS = {"scale_rewards": "group", "multi_objective_aggregation": "sum_then_normalize"}


def check_bound_settings(trainer, cascade: "Cascade") -> None:
    """Refuse to train ``combine: varied_groups`` under TRL settings its bound does not hold for: group std
    scaling, summed rewards, CARL's reward weight 1 (the cascade applies its own), groups of ``cascade.group``.
    Called once the trainer exists (engine.trainer.grpo.build_trainer); ``trainer`` is TRL's GRPOTrainer."""
    if cascade.mode != "varied_groups":
        return
    found = {k: getattr(trainer, k, None) for k in BOUND_SETTINGS}
    names = list(getattr(trainer, "reward_func_names", []) or [])
    weights = getattr(trainer, "reward_weights", None)
    carl_w = float(weights[names.index("carl")]) if weights is not None and "carl" in names else 1.0
    groups = int(getattr(trainer, "num_generations", cascade.group) or cascade.group)
    bad = {k: v for k, v in found.items() if v != BOUND_SETTINGS[k]}
    if carl_w != 1.0:
        bad["carl reward weight"] = carl_w
    if groups != cascade.group:
        bad["num_generations"] = groups
    if bad:
        raise ConfigError(
            "cascade.combine=varied_groups: its cap on CARL's part of the advantage does not hold under the TRL "
            f"settings in force ({', '.join(f'{k}={v!r}' for k, v in bad.items())})",
            hint="Keep TRL's scale_rewards='group' and multi_objective_aggregation='sum_then_normalize', or use "
                 "cascade.combine: add.",
            context={"found": {k: str(v) for k, v in bad.items()}, "expected": BOUND_SETTINGS})


class Cascade:
    """Gate + weight schedule + combination. ``carl_weight(step)`` is 0 in stage A and ramps to ``weight`` in B."""

    def __init__(self, gate: Gate, weight: float = 1.0, warmup_steps: int = 0, *, combine: str = "add",
                 cap: float = 0.25, group: int = 1):
        self.gate, self.weight, self.warmup_steps = gate, weight, warmup_steps
        self.mode, self.cap, self.group = combine, cap, group
        self.last_tied_fraction: float | None = None
        self.closed_at: int | None = None  # cascade.on_collapse=close_gate: CARL off from this step on, for good

    @classmethod
    def from_config(cls, cfg, metric: str) -> "Cascade":
        return cls(make_gate(cfg.cascade, metric), cfg.rewards.carl.weight, cfg.cascade.warmup_steps,
                   combine=cfg.cascade.combine, cap=cfg.cascade.carl_cap, group=cfg.grpo.num_generations)

    @property
    def stage(self) -> str:
        return "B" if self.gate.is_open and self.closed_at is None else "A"

    def close(self, step: int) -> None:
        """Back to stage A for the rest of the run (the collapse warning's ``close_gate`` action)."""
        if self.closed_at is None:
            self.closed_at = step

    def observe(self, step: int, metrics: dict[str, float]) -> GateEvent | None:
        if self.gate.observe(step, metrics):
            return GateEvent(step, self.gate.mode, dict(self.gate.detail))
        return None

    def carl_weight(self, step: int) -> float:
        if not self.gate.is_open or (self.closed_at is not None and step >= self.closed_at):
            return 0.0
        if self.warmup_steps <= 0:
            return self.weight
        return self.weight * min(1.0, (step - self.gate.opened_at + 1) / self.warmup_steps)

    def combine(self, carl: list[float], step: int, task: list[float] | None = None) -> list[float]:
        """The CARL term each completion adds to its summed (weighted) task reward ``task`` at ``step``.

        Completions come in consecutive groups of ``group`` (TRL's sampler). ``varied_groups`` needs ``task``
        and whole groups; a batch that is not whole groups falls back to treating it as one group."""
        w = self.carl_weight(step)
        if self.mode == "add" or w == 0.0:
            return [w * c for c in carl]
        if task is None or len(task) != len(carl):
            raise ValueError("combine=varied_groups needs the task reward of every completion")
        group = self.group if self.group > 1 and len(carl) % self.group == 0 else len(carl)
        out = combine_varied_groups(carl, task, group, w, self.cap)
        groups = [task[i: i + group] for i in range(0, len(task), group)]
        # the groups that got no CARL term (tied, or holding an unscorable reward): what was applied
        self.last_tied_fraction = sum(1 for g in groups if carl_free_group(g, self.cap)) / max(1, len(groups))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.state_dict(), "weight": self.weight, "warmup_steps": self.warmup_steps,
                "combine": self.mode, "cap": self.cap, "closed_at": self.closed_at}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.gate.load_state_dict(d.get("gate", {}))
        self.closed_at = d.get("closed_at")

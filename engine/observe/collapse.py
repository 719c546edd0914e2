"""The collapse early warning: ``collapse.onset`` from a run's own trajectory, before the collapse is plain.

A GRPO policy that collapses (issue 16: the demo's sparse start with ungated CARL; intrinsic rewards in general)
stops exploring while the task reward goes nowhere: the completions of a group become the same string (or all
run to the length cap), the policy entropy falls and Phi rises. Each signal alone is also what a *healthy* run
that is learning does; together with a flat task reward they are a collapse. Everything is relative to the
run's own start, so it means the same for a 12-token character model and a 152k-vocabulary LM.

:class:`CollapseMonitor` is causal and incremental: ``update(frame)`` sees one frame at a time (the trainer calls
it live, :func:`detect_collapse` replays a finished run through it) and returns the :class:`Alarm` once, at the
frame where it is first known. Per frame, with a trailing rolling mean over ``SMOOTH`` frames and baselines
taken as the median of the first ``BASELINE`` frames:

* **diversity** — distinct completions per group (``completions/distinct_per_group``) fell to ≤
  ``1 - DIVERSITY_DROP`` of its baseline, or the distinct fraction of the batch (``completions/distinct``) did;
* **length** — the clipped-completion ratio rose by ≥ ``CLIP_RISE`` above its baseline (completions run to the
  cap);
* **sharpening** — policy entropy fell to ≤ ``1 - ENTROPY_DROP`` of its baseline, or (no entropy logged) Phi
  rose by ≥ ``ENTROPY_DROP`` of its headroom ``1 - Φ₀``; entropy and Phi carry the same information
  (Φ = 1 − H/log V);
* **task flat** — the smoothed task reward is not above its baseline by more than
  ``max(TASK_MARGIN_ABS, TASK_MARGIN_REL · |baseline|)`` (a run that is learning its task is not collapsing).

The alarm fires at the first frame where (diversity or length) and sharpening and task flat have held on
``SUSTAIN`` consecutive frames, none of them within the baseline. Without a diversity or length signal in the
frames (runs logged by other tools) sharpening and task flat alone decide, with the stricter
``ENTROPY_DROP_ALONE``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from statistics import median
from typing import Any, Iterable

BASELINE = 10  # frames whose medians are the run's own start
SMOOTH = 10  # trailing rolling mean for every signal
SUSTAIN = 5  # consecutive frames all conditions must hold
DIVERSITY_DROP = 0.25  # distinct per group (or overall) at ≤ 75 % of its start
ENTROPY_DROP = 0.25  # entropy at ≤ 75 % of its start (or Phi up by 25 % of its headroom)
ENTROPY_DROP_ALONE = 0.5  # without any diversity/length signal in the frames
CLIP_RISE = 0.25  # clipped ratio up by 25 points
TASK_MARGIN_ABS = 0.05
TASK_MARGIN_REL = 0.25

DPG, DALL = "completions/distinct_per_group", "completions/distinct"


def _num(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _get(frame: Any, name: str) -> float | None:
    if hasattr(frame, "get") and not isinstance(frame, dict):
        return _num(frame.get(name))
    if name in frame:
        return _num(frame[name])
    return _num((frame.get("extra") or {}).get(name))


@dataclass
class Alarm:
    step: int  # the frame where the alarm is first known (what a live user sees)
    since: int  # the first frame of the sustained run of conditions
    evidence: dict[str, Any] = field(default_factory=dict)

    def message(self) -> str:
        ev = self.evidence
        parts = []
        for key, label, fmt in (("distinct_per_group", "distinct/group", "{:.2f}"), ("distinct", "distinct",
                                                                                      "{:.2f}"),
                                ("clipped_ratio", "clipped", "{:.0%}"), ("entropy", "entropy", "{:.2f}"),
                                ("phi", "Φ", "{:.3f}")):
            if key in ev:
                parts.append(f"{label} {fmt.format(ev[key]['start'])}→{fmt.format(ev[key]['now'])}")
        if "task_reward" in ev:
            parts.append(f"task {ev['task_reward']['start']:.3f}→{ev['task_reward']['now']:.3f} (flat)")
        return f"collapse onset at step {self.step}: " + ", ".join(parts)


class _Signal:
    """A trailing rolling mean plus the baseline (median of the first BASELINE values)."""

    def __init__(self) -> None:
        self.first: list[float] = []
        self.win: deque[float] = deque(maxlen=SMOOTH)
        self.base: float | None = None

    def add(self, v: float | None) -> None:
        if v is None:
            return
        if len(self.first) < BASELINE:
            self.first.append(v)
            if len(self.first) == BASELINE:
                self.base = median(self.first)
        self.win.append(v)

    @property
    def now(self) -> float | None:
        return sum(self.win) / len(self.win) if self.win else None

    @property
    def ready(self) -> bool:
        return self.base is not None and len(self.win) == SMOOTH


class CollapseMonitor:
    """Feed frames in step order with :meth:`update`; the first alarm is returned once (then ``alarm``)."""

    NAMES = (DPG, DALL, "clipped_ratio", "entropy", "phi", "task_reward")

    def __init__(self) -> None:
        self.sig = {n: _Signal() for n in self.NAMES}
        self.frames = 0
        self.streak = 0
        self.streak_since: int | None = None
        self.alarm: Alarm | None = None

    def _conditions(self) -> dict[str, bool] | None:
        s = self.sig
        d, a, c, e, p, t = (s[n] for n in self.NAMES)
        have_div = d.ready or a.ready or c.ready
        div = any(x.ready and x.base > 0 and x.now <= (1 - DIVERSITY_DROP) * x.base for x in (d, a))
        length = c.ready and c.now >= c.base + CLIP_RISE
        drop = ENTROPY_DROP if have_div else ENTROPY_DROP_ALONE
        if e.ready and e.base > 0:
            sharp = e.now <= (1 - drop) * e.base
        elif p.ready and p.base < 1:
            sharp = p.now - p.base >= drop * (1 - p.base)
        else:
            return None
        flat = True
        if t.ready:
            flat = t.now <= t.base + max(TASK_MARGIN_ABS, TASK_MARGIN_REL * abs(t.base))
        return {"diversity": div, "length": length, "sharpening": sharp, "task_flat": flat,
                "has_diversity": have_div}

    def update(self, frame: Any) -> Alarm | None:
        step = int(frame.step if hasattr(frame, "step") else frame["step"])
        for n in self.NAMES:
            self.sig[n].add(_get(frame, n))
        self.frames += 1
        if self.alarm is not None:
            return None
        cond = self._conditions() if self.frames > BASELINE else None
        hit = bool(cond) and cond["sharpening"] and cond["task_flat"] and (
            (cond["diversity"] or cond["length"]) if cond["has_diversity"] else True)
        if not hit:
            self.streak, self.streak_since = 0, None
            return None
        self.streak += 1
        if self.streak_since is None:
            self.streak_since = step
        if self.streak < SUSTAIN:
            return None
        ev: dict[str, Any] = {}
        for n, key in ((DPG, "distinct_per_group"), (DALL, "distinct"), ("clipped_ratio", "clipped_ratio"),
                       ("entropy", "entropy"), ("phi", "phi"), ("task_reward", "task_reward")):
            sg = self.sig[n]
            if sg.ready:
                ev[key] = {"start": round(sg.base, 4), "now": round(sg.now, 4)}
        ev["signals"] = [k for k in ("diversity", "length", "sharpening", "task_flat") if cond[k]]
        self.alarm = Alarm(step=step, since=self.streak_since, evidence=ev)
        return self.alarm


def detect_collapse(frames: Iterable[Any]) -> Alarm | None:
    """Replay frames (Frame objects or frame dicts, in step order) through a fresh monitor."""
    mon = CollapseMonitor()
    for f in frames:
        mon.update(f)
        if mon.alarm is not None:
            return mon.alarm
    return None


def plain_collapse_step(frames: Iterable[Any], *, distinct_below: float = 3.0, clipped_at: float = 0.9,
                        window: int = 5) -> int | None:
    """The step where the collapse is plain (the bench's reference for lead times): the trailing mean over
    ``window`` frames of distinct completions per group falls below ``distinct_below``, or of the clipped
    ratio reaches ``clipped_at`` (completions at the length cap)."""
    d: deque[float] = deque(maxlen=window)
    c: deque[float] = deque(maxlen=window)
    for f in frames:
        step = int(f.step if hasattr(f, "step") else f["step"])
        v, w = _get(f, DPG), _get(f, "clipped_ratio")
        if v is not None:
            d.append(v)
        if w is not None:
            c.append(w)
        if len(d) == window and sum(d) / window < distinct_below:
            return step
        if len(c) == window and sum(c) / window >= clipped_at:
            return step
    return None

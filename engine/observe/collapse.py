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
  only in runs that do not log distinct counts (TRL, verl …), the proxies: the share of tied groups (``frac_reward_zero_std``)
  rose by ≥ ``ZERO_STD_RISE`` above its baseline, the within-group reward spread (``reward_std``) fell to ≤
  ``1 - DIVERSITY_DROP`` of its baseline, or the mean completion length fell to ≤ ``1 - LENGTH_DROP`` of it
  (completions shrinking to a bare shortcut);
* **length** — the clipped-completion ratio rose by ≥ ``CLIP_RISE`` above its baseline (completions run to the
  cap);
* **sharpening** — policy entropy fell to ≤ ``1 - ENTROPY_DROP`` of its baseline, or (no entropy logged) Phi
  rose by ≥ ``ENTROPY_DROP`` of its headroom ``1 - Φ₀``; entropy and Phi carry the same information
  (Φ = 1 − H/log V);
* **task flat** — the smoothed task reward (else the reward, TRL's ``reward``) is not above its baseline by more
  than ``max(TASK_MARGIN_ABS, TASK_MARGIN_REL · |baseline|)`` (a run that is learning its task is not collapsing).

After the alarm the monitor keeps watching: once the conditions have not held for ``RECOVER`` consecutive frames
the alarm carries ``recovered_at`` (the first of those frames); should they hold again, it is open again.
Calibration (docs/coherence.md, "Collapse detector on other people's runs"): ``DIVERSITY_DROP`` 0.35 catches every
collapsing demo run before it is plain and raises nothing on the long lr 4e-4 demo run, whose distinct answers per
group wander between 3.3 and 5.3 while it learns.

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
DIVERSITY_DROP = 0.35  # distinct per group (or overall, or the reward spread) at ≤ 65 % of its start
ZERO_STD_RISE = 0.3  # tied-group share up by 30 points
LENGTH_DROP = 0.5  # mean completion length at ≤ 50 % of its start
RECOVER = 10  # frames without the conditions before an alarm counts as recovered
ENTROPY_DROP = 0.25  # entropy at ≤ 75 % of its start (or Phi up by 25 % of its headroom)
ENTROPY_DROP_ALONE = 0.5  # without any diversity/length signal in the frames
CLIP_RISE = 0.25  # clipped ratio up by 25 points
TASK_MARGIN_ABS = 0.05
TASK_MARGIN_REL = 0.25

DPG, DALL = "completions/distinct_per_group", "completions/distinct"
ZSTD, RSTD, LEN = "frac_reward_zero_std", "reward_std", "completion_length"


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
    recovered_at: int | None = None  # the conditions stopped holding here (RECOVER frames in a row) and since

    def message(self) -> str:
        ev = self.evidence
        parts = []
        for key, label, fmt in (("distinct_per_group", "distinct/group", "{:.2f}"), ("distinct", "distinct",
                                                                                      "{:.2f}"),
                                ("clipped_ratio", "clipped", "{:.0%}"), ("zero_std", "tied groups", "{:.0%}"),
                                ("reward_std", "reward std", "{:.3g}"), ("completion_length", "length", "{:.3g}"),
                                ("entropy", "entropy", "{:.2f}"),
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

    NAMES = (DPG, DALL, "clipped_ratio", "entropy", "phi", "task_reward", ZSTD, RSTD, LEN, "reward_mean")

    def __init__(self) -> None:
        self.sig = {n: _Signal() for n in self.NAMES}
        self.frames = 0
        self.streak = 0
        self.streak_since: int | None = None
        self.alarm: Alarm | None = None
        self.quiet = 0  # frames in a row without the conditions, after the alarm
        self.quiet_since: int | None = None

    def _conditions(self) -> dict[str, bool] | None:
        s = self.sig
        d, a, c, e, p, t = (s[n] for n in self.NAMES[:6])
        z, r, ln, rew = s[ZSTD], s[RSTD], s[LEN], s["reward_mean"]
        have_div = d.ready or a.ready or c.ready or z.ready or r.ready or ln.ready
        if d.ready or a.ready:  # carl's own runs count distinct completions: the direct signal
            div = any(x.ready and x.base > 0 and x.now <= (1 - DIVERSITY_DROP) * x.base for x in (d, a))
        else:  # other tools' runs: the proxies TRL/verl log
            div = (r.ready and r.base > 0 and r.now <= (1 - DIVERSITY_DROP) * r.base) or (
                z.ready and z.now >= z.base + ZERO_STD_RISE) or (
                ln.ready and ln.base > 0 and ln.now <= (1 - LENGTH_DROP) * ln.base)
        length = c.ready and c.now >= c.base + CLIP_RISE
        drop = ENTROPY_DROP if have_div else ENTROPY_DROP_ALONE
        if e.ready and e.base > 0:
            sharp = e.now <= (1 - drop) * e.base
        elif p.ready and p.base < 1:
            sharp = p.now - p.base >= drop * (1 - p.base)
        else:
            return None
        flat = True
        task = t if t.ready else rew
        if task.ready:
            flat = task.now <= task.base + max(TASK_MARGIN_ABS, TASK_MARGIN_REL * abs(task.base))
        return {"diversity": div, "length": length, "sharpening": sharp, "task_flat": flat,
                "has_diversity": have_div}

    def update(self, frame: Any) -> Alarm | None:
        """Feed the next frame; returns the Alarm at the frame it is first known (once), else None."""
        step = int(frame.step if hasattr(frame, "step") else frame["step"])
        for n in self.NAMES:
            self.sig[n].add(_get(frame, n))
        self.frames += 1
        cond = self._conditions() if self.frames > BASELINE else None
        hit = bool(cond) and cond["sharpening"] and cond["task_flat"] and (
            (cond["diversity"] or cond["length"]) if cond["has_diversity"] else True)
        if self.alarm is not None:
            self._track_recovery(step, hit)
            return None
        if not hit:
            self.streak, self.streak_since = 0, None
            return None
        self.streak += 1
        if self.streak_since is None:
            self.streak_since = step
        if self.streak < SUSTAIN:
            return None
        ev: dict[str, Any] = {}
        direct = self.sig[DPG].ready or self.sig[DALL].ready  # the proxies are evidence only when used
        for n, key in ((DPG, "distinct_per_group"), (DALL, "distinct"), ("clipped_ratio", "clipped_ratio"),
                       (ZSTD, "zero_std"), (RSTD, "reward_std"), (LEN, "completion_length"),
                       ("entropy", "entropy"), ("phi", "phi"), ("task_reward", "task_reward")):
            if direct and n in (ZSTD, RSTD, LEN):
                continue
            sg = self.sig[n]
            if sg.ready:
                ev[key] = {"start": round(sg.base, 4), "now": round(sg.now, 4)}
        if "task_reward" not in ev and self.sig["reward_mean"].ready:
            sg = self.sig["reward_mean"]
            ev["task_reward"] = {"start": round(sg.base, 4), "now": round(sg.now, 4)}
        ev["signals"] = [k for k in ("diversity", "length", "sharpening", "task_flat") if cond[k]]
        self.alarm = Alarm(step=step, since=self.streak_since, evidence=ev)
        return self.alarm

    def _track_recovery(self, step: int, hit: bool) -> None:
        assert self.alarm is not None
        if hit:
            self.quiet, self.quiet_since = 0, None
            self.alarm.recovered_at = None
            return
        self.quiet += 1
        if self.quiet_since is None:
            self.quiet_since = step
        if self.quiet >= RECOVER:
            self.alarm.recovered_at = self.quiet_since


def detect_collapse(frames: Iterable[Any], *, follow_recovery: bool = True,
                    column: Any = None) -> Alarm | None:
    """Replay frames (Frame objects or frame dicts, in step order) through the monitor's rules: the alarm (with
    ``recovered_at`` when the conditions stopped holding after it), or None. Computed column-wise with numpy
    (:func:`_replay`) — the same decisions as feeding a :class:`CollapseMonitor` frame by frame (a test holds
    them equal), at a fraction of the cost on long runs. ``column(name)``, when given, supplies a metric as a
    float array aligned with the frames, NaN where absent or not finite (analysis shares its cached columns)."""
    frames = frames if isinstance(frames, list) else list(frames)
    alarm = _replay(frames, column)
    if alarm is not None and not follow_recovery:
        alarm.recovered_at = None
    return alarm


def _column(frames: list[Any], name: str) -> Any:
    """One metric over the frames as a float array, NaN where absent or not finite."""
    import numpy as np

    from engine.frames import SCALAR_FIELDS, Frame

    if frames and all(type(f) is Frame for f in (frames[0], frames[-1])):
        if name in SCALAR_FIELDS:
            raw = [getattr(f, name) for f in frames]
        else:
            raw = [f.extra.get(name) if f.extra else None for f in frames]
        try:
            out = np.array(raw, dtype=float)  # None → NaN
        except (TypeError, ValueError):
            out = np.array([_get(f, name) for f in frames], dtype=float)
    else:
        out = np.array([_get(f, name) for f in frames], dtype=float)
    out[~np.isfinite(out)] = np.nan
    return out


class _Cols:
    """Per frame i, for one signal: ready (baseline known and a full window) / base / now, as the monitor's
    _Signal would hold them after frame i."""

    def __init__(self, vals: Any):
        import numpy as np

        present = ~np.isnan(vals)
        if not present.any():  # not logged: what the general path gives, without the passes
            self.ready = np.zeros(len(vals), dtype=bool)
            self.base = float("nan")
            self.now = np.zeros(len(vals))
            self.any_ready = False
            return
        count = np.cumsum(present)
        pv = vals[present]
        self.ready = count >= max(BASELINE, SMOOTH)
        self.base = float(np.median(pv[:BASELINE])) if len(pv) >= BASELINE else float("nan")
        csum = np.concatenate([[0.0], np.cumsum(pv)])
        hi = count
        lo = np.maximum(count - SMOOTH, 0)
        n = np.maximum(hi - lo, 1)
        self.now = (csum[hi] - csum[lo]) / n
        self.any_ready = bool(self.ready.any())


def _replay(frames: list[Any], column: Any = None) -> Alarm | None:
    import numpy as np

    n = len(frames)
    if n <= BASELINE:
        return None
    get = column or (lambda name: _column(frames, name))
    cols = {name: _Cols(get(name)) for name in CollapseMonitor.NAMES}
    d, a, c, e, p, t = (cols[x] for x in CollapseMonitor.NAMES[:6])
    z, r, ln, rew = cols[ZSTD], cols[RSTD], cols[LEN], cols["reward_mean"]
    false = np.zeros(n, dtype=bool)

    def drop_to(x: _Cols, frac: float) -> Any:
        return x.ready & (x.base > 0) & (x.now <= (1 - frac) * x.base) if x.base == x.base else false

    direct = d.ready | a.ready
    div_direct = drop_to(d, DIVERSITY_DROP) | drop_to(a, DIVERSITY_DROP)
    div_proxy = drop_to(r, DIVERSITY_DROP) | drop_to(ln, LENGTH_DROP)
    if z.base == z.base:
        div_proxy = div_proxy | (z.ready & (z.now >= z.base + ZERO_STD_RISE))
    div = np.where(direct, div_direct, div_proxy)
    length = c.ready & (c.now >= c.base + CLIP_RISE) if c.base == c.base else false
    have_div = d.ready | a.ready | c.ready | z.ready | r.ready | ln.ready
    drop = np.where(have_div, ENTROPY_DROP, ENTROPY_DROP_ALONE)
    e_ok = e.ready & (e.base > 0) if e.base == e.base else false
    p_ok = p.ready & (p.base < 1) if p.base == p.base else false
    sharp = np.where(e_ok, e.now <= (1 - drop) * (e.base if e.base == e.base else 0.0),
                     (p.now - (p.base if p.base == p.base else 0.0)) >= drop * (1 - (p.base if p.base == p.base
                                                                                   else 0.0)))
    defined = e_ok | p_ok
    task_ready = t.ready
    tb = t.base if t.base == t.base else 0.0
    rb = rew.base if rew.base == rew.base else 0.0
    flat_t = t.now <= tb + max(TASK_MARGIN_ABS, TASK_MARGIN_REL * abs(tb))
    flat_r = rew.now <= rb + max(TASK_MARGIN_ABS, TASK_MARGIN_REL * abs(rb))
    flat = np.where(task_ready, flat_t, np.where(rew.ready, flat_r, True))
    hit = defined & sharp & flat & np.where(have_div, div | length, True)
    hit[:BASELINE] = False  # the monitor judges from the frame after the baseline (frames > BASELINE)
    def step_of(i: int) -> int:  # only the few steps an alarm names (no pass over a long run's frames)
        f = frames[i]
        return int(f.step if hasattr(f, "step") else f["step"])
    # the first frame ending SUSTAIN consecutive hits
    run = 0
    at = None
    for i in np.flatnonzero(hit):
        run = run + 1 if i and hit[i - 1] and run else 1
        if run >= SUSTAIN:
            at = int(i)
            break
    if at is None:
        return None
    since = step_of(at - SUSTAIN + 1)
    ev: dict[str, Any] = {}
    use_direct = bool(direct[at])
    for name, key in ((DPG, "distinct_per_group"), (DALL, "distinct"), ("clipped_ratio", "clipped_ratio"),
                      (ZSTD, "zero_std"), (RSTD, "reward_std"), (LEN, "completion_length"),
                      ("entropy", "entropy"), ("phi", "phi"), ("task_reward", "task_reward")):
        if use_direct and name in (ZSTD, RSTD, LEN):
            continue
        col = cols[name]
        if col.ready[at]:
            ev[key] = {"start": round(col.base, 4), "now": round(float(col.now[at]), 4)}
    if "task_reward" not in ev and rew.ready[at]:
        ev["task_reward"] = {"start": round(rew.base, 4), "now": round(float(rew.now[at]), 4)}
    sig = {"diversity": bool(div[at]), "length": bool(length[at]), "sharpening": bool(sharp[at]),
           "task_flat": bool(flat[at])}
    ev["signals"] = [k for k in ("diversity", "length", "sharpening", "task_flat") if sig[k]]
    alarm = Alarm(step=step_of(at), since=since, evidence=ev)
    after = hit[at + 1:]
    hits_after = np.flatnonzero(after)
    quiet_from = at + 1 + (int(hits_after[-1]) + 1 if len(hits_after) else 0)
    if n - quiet_from >= RECOVER:
        alarm.recovered_at = step_of(quiet_from)
    return alarm


ENTROPY_COLLAPSE_FRAC = 0.10  # entropy below 10 % of its first logged value (TRL's step-0 entropy) …
ENTROPY_COLLAPSE_MIN_FRAMES = 3  # … for at least this many consecutive frames
EARLY_FRACTION = 0.5  # a collapse that starts in the first half of the run is "early" (bad)


def entropy_collapse(steps: list[int], ent: list[float]) -> dict[str, Any] | None:
    """The plain entropy collapse (what analysis reports as ``entropy_collapse``): entropy below
    ENTROPY_COLLAPSE_FRAC of its first logged value — a share of the start compares across models and vocabularies —
    for ≥ ENTROPY_COLLAPSE_MIN_FRAMES consecutive frames. ``{"a", "b", "base", "low", "early"}`` (indices into
    the series) or None."""
    if len(ent) < ENTROPY_COLLAPSE_MIN_FRAMES + 1 or ent[0] <= 0:
        return None
    base = ent[0]
    level = ENTROPY_COLLAPSE_FRAC * base
    spans, start = [], None
    if len(ent) > 64:  # a long run: the same spans column-wise
        import numpy as np

        below = np.asarray(ent, dtype=float) < level
        edges = np.diff(np.concatenate(([False], below, [False])).astype(np.int8))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        keep = ends - starts >= ENTROPY_COLLAPSE_MIN_FRAMES
        spans = list(zip(starts[keep].tolist(), (ends[keep] - 1).tolist()))
    else:
        for i, e in enumerate(list(ent) + [float("inf")]):
            if e < level and start is None:
                start = i
            elif not e < level and start is not None:
                if i - start >= ENTROPY_COLLAPSE_MIN_FRAMES:
                    spans.append((start, i - 1))
                start = None
    if not spans:
        return None
    a, b = spans[0][0], spans[-1][1]
    span_steps = steps[-1] - steps[0] or 1
    return {"a": a, "b": b, "base": base, "low": min(ent[a:b + 1]),
            "early": (steps[a] - steps[0]) / span_steps < EARLY_FRACTION}


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

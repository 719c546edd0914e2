"""How a metric is drawn: EMA smoothing, the x-axis (step or wall time), log-y, several runs overlaid on one
chart with `run diff` numbers beside them, and the TRL diagnostics listed first among the selectable metrics.

Pure functions over Frames (the observe screen only draws what these return; nothing here imports textual):

    view = View(smoothing=0.9, x="wall", log_y=True)
    s = series_of(frames, "kl", view)                  # Series(label, xs, ys, dropped, note)
    lines = overlay([("run-a", fa), ("run-b", fb)], "phi", view)
    rows = overlay_diff([("run-a", fa), ("run-b", fb)], "phi")
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

from engine.frames import Frame
from engine.observe.analysis import crystallization_step, finite
from engine.observe.diff import _delta_stats, _pairs

SMOOTHING_LEVELS = (0.0, 0.6, 0.9, 0.99)  # the EMA weights the screen's key cycles through
X_AXES = ("step", "wall")
MAX_OVERLAY = 4
# What GRPO practitioners watch instead of a loss that sits near 0 (TRL's names, as frames carry them)
TRL_METRICS = ("frac_reward_zero_std", "clipped_ratio", "kl", "grad_norm", "clip_ratio/region_mean",
               "clip_ratio/low_mean", "clip_ratio/high_mean", "entropy", "completion_length", "reward_std",
               "loss", "lr", "step_time")


@dataclass(frozen=True)
class View:
    smoothing: float = 0.0  # EMA weight in [0, 1): 0 draws the raw values
    x: str = "step"  # "step", or "wall": seconds since the run's first timestamped frame
    log_y: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if self.x not in X_AXES:
            raise ValueError(f"x must be one of {X_AXES}, got {self.x!r}")

    @property
    def is_default(self) -> bool:
        return self == View()

    def next_smoothing(self) -> "View":
        levels = SMOOTHING_LEVELS
        i = levels.index(self.smoothing) if self.smoothing in levels else -1
        return replace(self, smoothing=levels[(i + 1) % len(levels)])

    def next_x(self) -> "View":
        return replace(self, x=X_AXES[(X_AXES.index(self.x) + 1) % len(X_AXES)])

    def toggle_log(self) -> "View":
        return replace(self, log_y=not self.log_y)

    def describe(self) -> str:
        """One short line for the screen: ``EMA 0.9 · x wall s · log y``."""
        return " · ".join([f"EMA {self.smoothing:g}" if self.smoothing else "raw",
                           "x wall s" if self.x == "wall" else "x step",
                           "log y" if self.log_y else "linear y"])


@dataclass
class Series:
    label: str
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    dropped: int = 0  # finite values left out: ≤ 0 under log-y, or no timestamp on a wall-time axis
    note: str = ""


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (TensorBoard's and W&B's smoothing):
    ``m_t = w·m_{t-1} + (1−w)·v_t``, drawn as ``m_t / (1 − w^t)`` so the first points are not pulled to 0."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"EMA weight must be in [0, 1), got {weight}")
    if weight == 0.0:
        return [float(v) for v in values]
    out: list[float] = []
    m = 0.0
    corr = 1.0
    for v in values:
        m = weight * m + (1.0 - weight) * float(v)
        corr *= weight
        out.append(m / (1.0 - corr))
    return out


def series_of(frames: Sequence[Frame], metric: str, view: View = View(), label: str | None = None) -> Series:
    """The points a chart draws for one metric of one run under ``view``.

    Non-finite values are left out first; smoothing runs over the finite values in step order (so the EMA is
    the same whatever the axis); then the x-axis is applied (wall time: seconds since the run's first frame
    with a timestamp; frames without one are dropped) and, under log-y, values ≤ 0 are dropped (counted)."""
    s = Series(label or metric)
    t0 = next((f.timestamp for f in frames if finite(f.timestamp)), None)
    pts: list[tuple[Frame, float]] = []
    for f in frames:
        v = f.get(metric)
        if v is not None and finite(v):
            pts.append((f, float(v)))
    ys = ema([v for _, v in pts], view.smoothing)
    for (f, _), y in zip(pts, ys):
        if view.x == "wall":
            if t0 is None or not finite(f.timestamp):
                s.dropped += 1
                continue
            x = float(f.timestamp) - t0
        else:
            x = float(f.step)
        if view.log_y and y <= 0:
            s.dropped += 1
            continue
        s.xs.append(x)
        s.ys.append(y)
    if view.x == "wall" and t0 is None and pts:
        s.note = "no timestamps: nothing on a wall-time axis"
    elif view.log_y and s.dropped and not s.xs:
        s.note = "no positive values for log y"
    return s


def overlay(runs: Sequence[tuple[str, Sequence[Frame]]], metric: str, view: View = View()) -> list[Series]:
    """One Series per run (2–4 runs, in the order given), aligned on the chosen axis: steps as logged, or wall
    time since each run's own start (so runs started hours apart still overlay)."""
    if len(runs) > MAX_OVERLAY:
        raise ValueError(f"overlay takes at most {MAX_OVERLAY} runs, got {len(runs)}")
    return [series_of(frames, metric, view, label=label) for label, frames in runs]


def overlay_diff(runs: Sequence[tuple[str, Sequence[Frame]]], metric: str) -> list[dict]:
    """`run diff` numbers of each run against the first (the reference), for the charted metric and Φ, on the
    steps both logged (raw values, not smoothed): ``{"label", "aligned_steps", "metric": stats|None, "phi":
    stats|None, "crystallization_step": {"a", "b"}}``; stats as in :func:`engine.observe.diff.diff_runs`
    (deltas are run − reference)."""
    if not runs:
        return []
    ref_label, ref_frames = runs[0]
    a = {f.step: f for f in ref_frames}
    ca = crystallization_step(list(ref_frames))
    out = []
    for label, frames in runs[1:]:
        b = {f.step: f for f in frames}
        steps = sorted(a.keys() & b.keys())
        out.append({"label": label, "reference": ref_label, "aligned_steps": len(steps),
                    "metric": _delta_stats(_pairs(a, b, steps, metric)),
                    "phi": _delta_stats(_pairs(a, b, steps, "phi")),
                    "crystallization_step": {"a": ca, "b": crystallization_step(list(frames))}})
    return out


def metric_choices(names: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """The metrics a chart can cycle through: TRL's GRPO diagnostics first (in TRL_METRICS order), then the
    rest as given."""
    present = [n for n in names if n not in exclude]
    first = [n for n in TRL_METRICS if n in present]
    return first + [n for n in present if n not in first]


def fmt(x: float | None) -> str:
    """A compact signed number for narrow panels."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    a = abs(x)
    return f"{x:+.3g}" if 1e-3 <= a < 1e4 else f"{x:+.2e}"

"""What a run's frames say: phase state, crystallization step, health findings, and the observe summary.

Every window and threshold is defined once here (and documented in docs/observe.md). Windows count
*frames* (logged steps), not optimizer steps, so they mean the same for a run logged every step and one
logged every 10 steps.

Phase and crystallization step come from change-points in the run's own Φ trajectory relative to its start
(engine/observe/trajectory.py; SIGMA = 3/16 stays the charts' reference line). The collapse early warning
(``collapse.onset``) is engine/observe/collapse.py.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any, Iterable, Sequence

from functools import partial
from operator import attrgetter, is_not

from engine.frames import SCALAR_FIELDS, Frame, gc_paused

_SCALARS = frozenset(SCALAR_FIELDS)
from engine.probe import SIGMA  # the crystallization threshold: one definition, in the probe (re-exported)

SMOOTH_WINDOW = 5

# health thresholds
ENTROPY_COLLAPSE_MIN_FRAMES = 3  # consecutive frames a span rule must hold (entropy / length collapse)
RECOVER_FRAMES = 3  # a span finding whose condition has not held for this many last frames has recovered
EARLY_FRACTION = 0.5  # a collapse that starts in the first half of the run is "early" (bad)
# (the entropy-collapse thresholds live with the collapse detector: engine/observe/collapse.py)
ZERO_STD_WARN, ZERO_STD_BAD = 0.5, 0.9  # rolling mean of frac_reward_zero_std
CLIPPED_WARN, CLIPPED_BAD = 0.2, 0.5  # rolling mean of the clipped-completion ratio
ROLL_WINDOW = 5  # rolling window for the two ratios above
LENGTH_WINDOW = 20  # frames compared for length-driven reward hacking
LENGTH_CORR = 0.7  # reward ~ length correlation that counts as "driven by length"
LENGTH_GROWTH = 1.5  # completion length grew by ≥ 50 % …
LENGTH_CLIPPED = 0.3  # … or ≥ 30 % of completions hit the cap
STALL_WINDOW = 20  # frames over which Φ must move
STALL_RANGE = 0.01  # max − min of Φ below this over STALL_WINDOW frames: stalled
KL_WARN, KL_BAD = 1.0, 10.0  # absolute KL levels
KL_SPIKE = 5.0  # or a jump: KL above 5× the median of the KL_SPIKE_WINDOW frames before it …
KL_SPIKE_WINDOW = 10
KL_SPIKE_MIN = 0.3  # … and above 0.3 (a KL that starts near 0 and grows while the policy learns is no spike)
LENGTH_COLLAPSE_FRAC = 0.25  # mean completion length at ≤ 25 % of its first logged value …
LENGTH_COLLAPSE_MIN_START = 8.0  # … from a start of at least 8 tokens, for ENTROPY_COLLAPSE_MIN_FRAMES frames
SOLVED_MARGIN = 0.1  # a reward within 10 % of the run's best (of its own range) counts as solved groups


# ── small pure helpers ────────────────────────────────────────────────────────────────────────────────


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


_COLUMNS: dict[int, tuple[Sequence[Frame], dict[str, tuple[list[int], list[float]]]]] = {}


def series(frames: Sequence[Frame], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a metric over the frames where it is finite (computed once per metric while a
    :func:`columns_cached` block is open on these frames: every detector reads the same columns)."""
    cached = _COLUMNS.get(id(frames))
    if cached is not None and cached[0] is frames:
        hit = cached[1].get(name)
        if hit is None:
            hit = cached[1][name] = _series(frames, name)
            if name == "phi":
                cached[1]["\0memo"] = (hit[1], {})
        return hit
    return _series(frames, name)


_STEP = attrgetter("step")


def _steps_of(frames: Sequence[Frame]) -> Any:
    import numpy as np

    cached = _COLUMNS.get(id(frames))
    if cached is not None and cached[0] is frames:
        arr = cached[1].get("\0steps")
        if arr is None:
            arr = cached[1]["\0steps"] = np.fromiter(map(_STEP, frames), dtype=np.int64, count=len(frames))
        return arr
    return np.fromiter(map(_STEP, frames), dtype=np.int64, count=len(frames))


def column_array(frames: Sequence[Frame], name: str) -> Any:
    """A metric over the frames as a float array aligned with them, NaN where absent or not finite (cached
    inside a :class:`columns_cached` block, shared by every detector and the collapse replay)."""
    cached = _COLUMNS.get(id(frames))
    key = "\0col:" + name
    if cached is not None and cached[0] is frames:
        arr = cached[1].get(key)
        if arr is None:
            names = cached[1].get("\0names")
            if names is None:
                names = cached[1]["\0names"] = set(metric_names(frames))
            import numpy as np

            if name not in names:  # not logged by this run: no pass over the frames
                arr = np.full(len(frames), np.nan)
            else:
                arr = _column_array(frames, name)
                bad = ~np.isfinite(arr)
                if name in _SCALARS and not bad.any():  # every frame held a finite number: the raw column is it
                    cached[1]["\0raw:" + name] = arr
            cached[1][key] = arr
        return arr
    return _column_array(frames, name)


def _column_array(frames: Sequence[Frame], name: str) -> Any:
    import numpy as np

    if name in _SCALARS and not (frames and type(getattr(frames[0], name)) is bool):
        try:  # the fast path: a value in every frame, all numbers (C loops only)
            arr = np.fromiter(map(attrgetter(name), frames), dtype=float, count=len(frames))
        except (TypeError, ValueError):
            raw = list(map(attrgetter(name), frames))
        else:
            raw = None
    elif name.startswith(("rewards/", "carl/")):
        raw = [f.get(name) for f in frames]
    else:
        raw = [f.extra.get(name) if f.extra else None for f in frames]
    if raw is not None:
        try:
            if any(type(v) is bool for v in raw[:1]):
                raise TypeError
            arr = np.array(raw, dtype=float)  # None → NaN
        except (TypeError, ValueError):  # a value that is not a number: the careful way
            arr = np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan
                            for v in raw], dtype=float)
    arr[~np.isfinite(arr)] = np.nan
    return arr


def _series(frames: Sequence[Frame], name: str) -> tuple[list[int], list[float]]:
    """From the shared column (no per-value tuples: they would make the cyclic GC walk a long run's frames again
    and again)."""
    import numpy as np

    arr = column_array(frames, name)
    ok = ~np.isnan(arr)
    if not ok.any():
        return [], []
    return _steps_of(frames)[ok].tolist(), arr[ok].tolist()


_gc_paused = gc_paused  # the summary makes no reference cycles either (engine.frames.gc_paused)


class columns_cached:
    """``with columns_cached(frames):`` — series() of these frames is computed once per metric inside."""

    def __init__(self, frames: Sequence[Frame]):
        self.frames = frames
        self.key = id(frames)

    def __enter__(self) -> "columns_cached":
        cur = _COLUMNS.get(self.key)
        self.owner = not (cur is not None and cur[0] is self.frames)  # nested in a block on the same frames
        if self.owner:
            _COLUMNS[self.key] = (self.frames, {})
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owner:
            _COLUMNS.pop(self.key, None)


def rolling_mean(xs: Sequence[float], window: int) -> list[float]:
    """Trailing rolling mean (the first values average what exists so far)."""
    if len(xs) > 64:
        return _rolling_mean_array(xs, window).tolist()
    return _rolling_mean_list(xs, window)


def _rolling_mean_array(xs: Any, window: int) -> Any:
    """:func:`rolling_mean` as a numpy array (the same numbers)."""
    import numpy as np

    if len(xs) <= 64:
        return np.asarray(_rolling_mean_list(list(xs), window), dtype=float)
    c = np.concatenate([[0.0], np.cumsum(np.asarray(xs, dtype=float))])
    idx = np.arange(1, len(xs) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _rolling_mean_list(xs: Sequence[float], window: int) -> list[float]:
    out: list[float] = []
    acc = 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= window:
            acc -= xs[i - window]
        out.append(acc / min(i + 1, window))
    return out


def slope(xs: Sequence[float]) -> float:
    """Least-squares slope of xs against 0..n-1 (0 for fewer than 2 values)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx = (n - 1) / 2
    my = sum(xs) / n
    num = sum((i - mx) * (x - my) for i, x in enumerate(xs))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    n = len(xs)
    if n < 3:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return 0.0
    return sxy / math.sqrt(sxx * syy)


# ── phase ─────────────────────────────────────────────────────────────────────────────────────────────


def _memo(kind: str, phis: Sequence[float], fn: Any) -> Any:
    """Inside a :class:`columns_cached` block, one result per (kind, Φ series) — the cached series is the same list
    object every time (the summary asks for the change-point five times)."""
    for _, cache in _COLUMNS.values():
        hit = cache.get("\0memo")
        if hit is not None and hit[0] is phis:
            if kind not in hit[1]:
                hit[1][kind] = fn()
            return hit[1][kind]
    return fn()


def phase_of(phis: Sequence[float]) -> str | None:
    """The current phase of a Φ trajectory, from its own change-points (engine.observe.trajectory)."""
    from engine.observe import trajectory as _phase

    return _memo("phase", phis, lambda: _phase.phase_of(phis, crystallization_index(phis)))


def crystallization_index(phis: Sequence[float]) -> int | None:
    """Index of the change-point where Φ began its first detected rise above its start (engine.observe.trajectory)."""
    from engine.observe import trajectory as _phase

    return _memo("cp", phis, lambda: _phase.change_point(phis))


def crystallization_step(frames: Sequence[Frame]) -> int | None:
    steps, phis = series(frames, "phi")
    i = crystallization_index(phis)
    return None if i is None else steps[i]


def phase(frames: Sequence[Frame]) -> str | None:
    return phase_of(series(frames, "phi")[1])


# ── health ────────────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Finding:
    code: str  # stable, e.g. "entropy_collapse"
    severity: str  # "warn" | "bad"
    first_step: int
    last_step: int
    message: str  # one line: what happened
    hint: str  # one line: what to do
    step: int | None = None  # collapse.onset: the step where the warning is first known
    evidence: dict[str, Any] | None = None  # collapse.onset: start vs now of each signal
    recovered_at: int | None = None  # the condition stopped holding at this step (and has not held since)

    @property
    def open(self) -> bool:
        return self.recovered_at is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("step", "evidence", "recovered_at"):
            if d[k] is None:
                del d[k]
        return d


def _spans(flags: Sequence[bool], min_len: int = 1) -> list[tuple[int, int]]:
    """Index ranges [a, b] of consecutive True values at least min_len long (a bool numpy array: column-wise)."""
    if not isinstance(flags, (list, tuple)):
        import numpy as np

        edges = np.diff(np.concatenate(([False], np.asarray(flags, dtype=bool), [False])).astype(np.int8))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        keep = ends - starts >= min_len
        return list(zip(starts[keep].tolist(), (ends[keep] - 1).tolist()))
    out, start = [], None
    for i, fl in enumerate(list(flags) + [False]):
        if fl and start is None:
            start = i
        elif not fl and start is not None:
            if i - start >= min_len:
                out.append((start, i - 1))
            start = None
    return out


def recovered_step(steps: Sequence[int], last_flagged: int) -> int | None:
    """The step where a condition last flagged at index ``last_flagged`` stopped holding — when it has not held
    for the last RECOVER_FRAMES frames — else None (still open)."""
    if len(steps) - 1 - last_flagged >= RECOVER_FRAMES:
        return steps[last_flagged + 1]
    return None


def _nonfinite_steps(frames: Sequence[Frame], name: str) -> list[int] | None:
    """Steps where a Frame scalar logged on every frame is NaN/±inf (C loops only); None when some frame lacks it
    or holds a non-number (the caller's per-frame path decides those)."""
    import numpy as np

    if len(frames) < 64 or type(getattr(frames[0], name)) not in (float, int):
        return None
    cached = _COLUMNS.get(id(frames))
    raw = cached[1].get("\0raw:" + name) if cached is not None and cached[0] is frames else None
    if raw is not None:
        arr = raw
    else:
        try:
            arr = np.fromiter(map(attrgetter(name), frames), dtype=float, count=len(frames))
        except (TypeError, ValueError):
            return None
    return _steps_of(frames)[np.flatnonzero(~np.isfinite(arr))].tolist()


def detect_nonfinite(frames: Sequence[Frame]) -> list[Finding]:
    """NaN/±inf in the loss (``nonfinite_loss``), the reward (``nonfinite_reward``) or the gradient norm
    (``nonfinite_grad``) — transformers writes them into trainer_state.json as bare ``NaN``/``Infinity``.
    Never "recovered": weights that saw a non-finite update stay suspect."""
    out = []
    inf = math.inf
    bad = _nonfinite_steps(frames, "loss")
    if bad is None:
        bad = [f.step for f in frames if (v := f.loss) is not None and not -inf < v < inf]  # NaN compares False
    if bad:
        out.append(Finding("nonfinite_loss", "bad", bad[0], bad[-1],
                           f"loss is NaN/inf on {len(bad)} frame(s), first at step {bad[0]}",
                           "Lower the learning rate, enable gradient clipping (max_grad_norm) or check for fp16 "
                           "overflow."))
    rew = _nonfinite_steps(frames, "reward_mean")
    if rew is None:
        rew = [f.step for f in frames if (v := f.reward_mean) is not None and not -inf < v < inf]
    if rew:
        out.append(Finding("nonfinite_reward", "bad", rew[0], rew[-1],
                           f"reward is NaN/inf on {len(rew)} frame(s), first at step {rew[0]}",
                           "A reward function returns NaN/inf (a failed parse, a division by zero): guard it and "
                           "return a finite score; the advantages of those groups are garbage."))
    grad = [f.step for f in frames if f.extra and (v := f.extra.get("grad_norm")) is not None
            and not -inf < v < inf]
    if grad:
        out.append(Finding("nonfinite_grad", "bad", grad[0], grad[-1],
                           f"grad_norm is NaN/inf on {len(grad)} frame(s), first at step {grad[0]}",
                           "The update diverged: resume from the checkpoint before it with a lower learning rate "
                           "and gradient clipping (max_grad_norm)."))
    return out


def detect_entropy_collapse(frames: Sequence[Frame]) -> list[Finding]:
    """The plain entropy collapse, computed by engine.observe.collapse.entropy_collapse (one home for collapse
    rules); reported bad when it starts in the first half of the run, else warn."""
    from engine.observe.collapse import entropy_collapse

    steps, ent = series(frames, "entropy")
    c = entropy_collapse(steps, ent)
    if c is None:
        return []
    a, b, base, low = c["a"], c["b"], c["base"], c["low"]
    return [Finding("entropy_collapse", "bad" if c["early"] else "warn", steps[a], steps[b],
                    f"policy entropy fell from {base:.3g} to {low:.3g} nats ({low / base:.0%} of its start)"
                    + (" early in the run" if c["early"] else ""),
                    "The policy stopped exploring: raise temperature, add an entropy bonus or lower the learning rate.",
                    recovered_at=recovered_step(steps, b))]


def detect_length_collapse(frames: Sequence[Frame]) -> list[Finding]:
    """Completions shrinking to a few tokens (the policy found that a bare answer or an empty one pays)."""
    steps, ln = series(frames, "completion_length")
    if len(ln) < ENTROPY_COLLAPSE_MIN_FRAMES + 1 or ln[0] < LENGTH_COLLAPSE_MIN_START:
        return []
    base = ln[0]
    if len(ln) > 64:
        import numpy as np

        spans = _spans(np.asarray(ln, dtype=float) <= LENGTH_COLLAPSE_FRAC * base, ENTROPY_COLLAPSE_MIN_FRAMES)
    else:
        spans = _spans([x <= LENGTH_COLLAPSE_FRAC * base for x in ln], ENTROPY_COLLAPSE_MIN_FRAMES)
    if not spans:
        return []
    a, b = spans[0][0], spans[-1][1]
    span_steps = steps[-1] - steps[0] or 1
    early = (steps[a] - steps[0]) / span_steps < EARLY_FRACTION
    low = min(ln[a:b + 1])
    return [Finding("length_collapse", "bad" if early else "warn", steps[a], steps[b],
                    f"completions shrank from {base:.3g} to {low:.3g} tokens ({low / base:.0%} of their start)",
                    "Check what the short completions say: a format or answer-only shortcut paid — reward the "
                    "reasoning format or penalise too-short answers.", recovered_at=recovered_step(steps, b))]


def _ratio_finding(frames: Sequence[Frame], name: str, warn: float, bad: float, code: str, what: str,
                   hint: str, vals_steps: tuple[list[int], list[float]] | None = None) -> list[Finding]:
    import numpy as np

    if vals_steps is None:
        col = column_array(frames, name)
        ok = ~np.isnan(col)
        vals_steps = (_steps_of(frames)[ok], col[ok])
    steps, vals = vals_steps  # numpy arrays: no per-value Python objects
    if not len(vals):
        return []
    roll = _rolling_mean_array(vals, ROLL_WINDOW)
    spans = _spans(roll >= warn)
    if not spans:
        return []
    a, b = spans[0][0], spans[-1][1]
    peak = float(roll[a:b + 1].max())
    sev = "bad" if peak >= bad else "warn"
    rec = recovered_step(steps, b)
    return [Finding(code, sev, int(steps[a]), int(steps[b]),
                    f"{what} reached {peak:.0%} (rolling mean of {ROLL_WINDOW})",
                    hint, recovered_at=None if rec is None else int(rec))]


def solved_share_array(frames: Sequence[Frame]) -> Any:
    """Per frame (aligned, NaN where unknown), how much of the tied-group fraction can be groups that are all
    *right* (solved prompts). With a 0..1 task reward (carl's accuracy) that is at most the accuracy; with a
    reward of unknown scale, its place in the run's own range — counted only once the reward has climbed at least
    half that range from its start (a reward that sits at one level from step 1 says nothing about being right).
    A group that ties because every completion is correct is a solved prompt, not a dead one (no signal, but
    nothing wrong). None when no reward is logged."""
    import numpy as np

    for name in ("task_reward", "reward_mean"):
        col = column_array(frames, name)
        ok = ~np.isnan(col)
        if ok.sum() >= 2:
            break
    else:
        return None
    vals = col[ok]
    roll = _rolling_mean_array(vals, ROLL_WINDOW)
    out = np.full(len(frames), np.nan)
    if name == "task_reward" and vals.min() >= 0.0 and vals.max() <= 1.0:
        out[ok] = np.minimum(1.0, roll)  # an accuracy bounds the share of all-correct groups
        return out
    lo, hi = float(roll.min()), float(roll.max())
    if hi - lo <= 1e-9:
        return None  # a reward that never moved: nothing says its level is "right"
    climbed = roll - roll[0] >= 0.5 * (hi - lo)  # the reward's scale is unknown: only a level it climbed to
    out[ok] = np.where(climbed, np.clip((roll - lo) / (hi - lo) + SOLVED_MARGIN, 0.0, 1.0), 0.0)
    return out


def solved_share(frames: Sequence[Frame]) -> dict[int, float]:
    """:func:`solved_share_array` by step (for readers of one step at a time)."""
    import numpy as np

    arr = solved_share_array(frames)
    if arr is None:
        return {}
    ok = ~np.isnan(arr)
    return dict(zip(_steps_of(frames)[ok].tolist(), arr[ok].tolist()))


def detect_zero_std(frames: Sequence[Frame]) -> list[Finding]:
    """Dead groups (rewards all tie and are all wrong): ``frac_reward_zero_std`` less the share of tied groups
    that can be solved ones (see :func:`solved_share_array`)."""
    import numpy as np

    z = column_array(frames, "frac_reward_zero_std")
    ok = ~np.isnan(z)
    if not ok.any():
        return []
    solved = solved_share_array(frames)
    dead = z[ok] if solved is None else np.maximum(0.0, z[ok] - np.nan_to_num(solved[ok], nan=0.0))
    return _ratio_finding(frames, "frac_reward_zero_std", ZERO_STD_WARN, ZERO_STD_BAD, "zero_std_rewards",
                          "groups whose rewards all tie and are not solved (no GRPO gradient)",
                          "Make the reward finer-grained, raise num_generations or the sampling temperature.",
                          vals_steps=(_steps_of(frames)[ok], dead))


def detect_clipped(frames: Sequence[Frame]) -> list[Finding]:
    return _ratio_finding(frames, "clipped_ratio", CLIPPED_WARN, CLIPPED_BAD, "clipped_completions",
                          "completions cut at max_completion_length",
                          "Raise max_completion_length or penalise length; clipped completions bias the reward.")


def detect_length_hacking(frames: Sequence[Frame]) -> list[Finding]:
    """Reward rising together with completion length running to the cap."""
    def ok(f: Frame) -> bool:
        return finite(f.reward_mean) and finite(f.completion_length)

    head = [f for f in itertools.islice((f for f in frames if ok(f)), 2 * SMOOTH_WINDOW)]
    if len(head) < 2 * SMOOTH_WINDOW:
        return []
    tail = list(itertools.islice((f for f in reversed(frames) if ok(f)), LENGTH_WINDOW))[::-1]
    rows = [(f.step, f.reward_mean, f.completion_length, f.clipped_ratio) for f in head[:SMOOTH_WINDOW]]
    if len(tail) < LENGTH_WINDOW or head[-1].step >= tail[0].step:  # a short run: use every qualifying frame
        rows = [(f.step, f.reward_mean, f.completion_length, f.clipped_ratio) for f in frames if ok(f)]
    else:
        rows += [(f.step, f.reward_mean, f.completion_length, f.clipped_ratio) for f in tail]
    win = rows[-LENGTH_WINDOW:]
    rew = [r[1] for r in win]
    ln = [r[2] for r in win]
    first_len = sum(r[2] for r in rows[:SMOOTH_WINDOW]) / SMOOTH_WINDOW
    last_len = sum(ln[-SMOOTH_WINDOW:]) / SMOOTH_WINDOW
    clipped = [r[3] for r in win[-SMOOTH_WINDOW:] if finite(r[3])]
    clipped_mean = sum(clipped) / len(clipped) if clipped else 0.0
    grew = first_len > 0 and last_len / first_len >= LENGTH_GROWTH
    to_cap = clipped_mean >= LENGTH_CLIPPED
    corr = correlation(rew, ln)
    if slope(rew) > 0 and slope(ln) > 0 and corr >= LENGTH_CORR and (grew or to_cap):
        detail = f"length {first_len:.0f}→{last_len:.0f}" + (f", {clipped_mean:.0%} clipped" if clipped else "")
        return [Finding("length_hacking", "bad", win[0][0], win[-1][0],
                        f"reward rises with completion length (r={corr:.2f}; {detail})",
                        "The policy may be paid for length: add a length penalty or check the reward on short answers.")]
    return []


def detect_stalled_phi(frames: Sequence[Frame]) -> list[Finding]:
    steps, phis = series(frames, "phi")
    if len(phis) < STALL_WINDOW:
        return []
    win = phis[-STALL_WINDOW:]
    if max(win) - min(win) >= STALL_RANGE or phase_of(phis) == "knowing":
        return []
    return [Finding("stalled_phi", "warn", steps[-STALL_WINDOW], steps[-1],
                    f"Φ has not moved over the last {STALL_WINDOW} frames (range {max(win) - min(win):.4f}, "
                    f"mean {sum(win) / len(win):.3f}, not above its start)",
                    "Training is not changing coherence: check the learning rate, the gate and the CARL weight.")]


def _trailing_medians(xs: Sequence[float], window: int) -> list[float]:
    """out[i] = median of xs[max(0, i - window):i] (NaN at i = 0)."""
    n = len(xs)
    out = [float("nan")] * n
    head = min(n, window + 1)
    for i in range(1, head):
        out[i] = median(xs[:i])
    if n > window:
        import numpy as np
        from numpy.lib.stride_tricks import sliding_window_view

        med = np.median(sliding_window_view(np.asarray(xs, dtype=float), window), axis=1)  # med[j]: xs[j:j+w]
        out[window:] = med[:n - window].tolist()
    return out


def detect_kl_blowup(frames: Sequence[Frame]) -> list[Finding]:
    """KL to the reference (only when logged) at an absolute level (≥ KL_WARN), or a spike: above KL_SPIKE × the
    median of the frames just before it and above KL_SPIKE_MIN. Never a ratio to the run's start: KL starts near 0
    (policy = reference) and every run that learns multiplies it."""
    import numpy as np

    col = column_array(frames, "kl")
    if np.isnan(col).all() or np.nanmax(col) <= KL_SPIKE_MIN:  # never high enough to be a level or a spike
        return []
    steps, kl = series(frames, "kl")
    prev_median = _trailing_medians(kl, KL_SPIKE_WINDOW)  # median of the (up to) 10 values before each
    flags = []
    limit: float | None = None  # while a spike holds: the level it must fall back under (from before it)
    for i, v in enumerate(kl):
        if limit is not None and v <= limit:
            limit = None
        if limit is None and i >= 3 and v > KL_SPIKE_MIN:  # only a value above the floor can be a spike
            level = max(KL_SPIKE_MIN, KL_SPIKE * prev_median[i])
            if v > level:
                limit = level
        flags.append(v >= KL_WARN or limit is not None)
    spans = _spans(flags)
    if not spans:
        return []
    a, b = spans[0][0], spans[-1][1]
    peak = max(kl[a:b + 1])
    before = median(kl[max(0, a - KL_SPIKE_WINDOW):a]) if a else kl[0]
    return [Finding("kl_blowup", "bad" if peak >= KL_BAD else "warn", steps[a], steps[b],
                    f"KL to the reference reached {peak:.3g} (from {before:.3g} just before)",
                    "The policy is drifting fast: raise beta, lower the learning rate or clip harder.",
                    recovered_at=recovered_step(steps, b))]


def detect_collapse_onset(frames: Sequence[Frame]) -> list[Finding]:
    """The collapse early warning (engine/observe/collapse.py), replayed over the frames."""
    from engine.observe.collapse import detect_collapse

    alarm = detect_collapse(frames, column=lambda name: column_array(frames, name))
    if alarm is None:
        return []
    return [Finding("collapse.onset", "bad", alarm.since, alarm.step, alarm.message(),
                    "The policy is collapsing onto a few answers while the task reward is flat: stop, or keep CARL "
                    "out of tied groups (cascade.combine: varied_groups, cascade.on_collapse: close_gate).",
                    step=alarm.step, evidence=alarm.evidence, recovered_at=alarm.recovered_at)]


IS_RATIO_DRIFT = 0.1  # TRL's sampling/importance_sampling_ratio/mean off 1 by ≥ 10 % (rolling mean of 5)
TOOL_FAIL_WARN, TOOL_FAIL_BAD = 0.5, 0.9  # rolling mean of tools/failure_frequency


def detect_sampling_drift(frames: Sequence[Frame]) -> list[Finding]:
    """vLLM drift: the importance-sampling ratio between the trainer's and the generator's log-probs (TRL logs
    ``sampling/importance_sampling_ratio/mean``) away from 1 means the two disagree about the policy."""
    steps, vals = series(frames, "sampling/importance_sampling_ratio/mean")
    if not vals:
        return []
    dev = [abs(v - 1.0) for v in rolling_mean(vals, ROLL_WINDOW)]
    spans = _spans([d >= IS_RATIO_DRIFT for d in dev], ENTROPY_COLLAPSE_MIN_FRAMES)
    if not spans:
        return []
    a, b = spans[0][0], spans[-1][1]
    peak = max(dev[a:b + 1])
    return [Finding("sampling_drift", "bad" if peak >= 3 * IS_RATIO_DRIFT else "warn", steps[a], steps[b],
                    f"importance-sampling ratio (trainer vs generator log-probs) off 1 by {peak:.0%} "
                    f"(rolling mean of {ROLL_WINDOW})",
                    "The generator (vLLM) and the trainer disagree: check that weights are synced each step, the "
                    "same dtype on both, and TRL's vllm_importance_sampling_correction.",
                    recovered_at=recovered_step(steps, b))]


def detect_tool_failures(frames: Sequence[Frame]) -> list[Finding]:
    return _ratio_finding(frames, "tools/failure_frequency", TOOL_FAIL_WARN, TOOL_FAIL_BAD, "tool_failures",
                          "tool calls that fail", "Check the tool schema in the prompt and the tool's errors: the "
                          "policy cannot learn from calls that never run.")


def trl_signals(frames: Sequence[Frame]) -> dict[str, Any] | None:
    """TRL's health numbers in one place (the summary's ``signals``; None when none is logged): entropy as a share
    of its first value, the last tied-group share, clip ratios, importance-sampling ratio, tool failures, KL (only
    when logged)."""
    out: dict[str, Any] = {}
    _, ent = series(frames, "entropy")
    if len(ent) >= 2 and ent[0] > 0:
        out["entropy_share_of_start"] = round(ent[-1] / ent[0], 4)
    names = ["frac_reward_zero_std", "kl", "clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_mean",
             "sampling/importance_sampling_ratio/mean", "sampling/importance_sampling_ratio/min",
             "sampling/importance_sampling_ratio/max", "tools/failure_frequency", "reward_std"]
    present = set(metric_names(frames[-200:]))  # only the last value is needed: scan back from the end
    todo = [n for n in names if n in present]  # a metric not logged lately has no current value
    last: dict[str, float] = {}
    for f in reversed(frames):
        for n in todo:
            if n not in last:
                v = f.get(n)
                if v is not None and finite(v):
                    last[n] = float(v)
        if len(last) == len(todo):
            break
    for n in names:
        if n in last:
            out[n] = round(last[n], 6)
    return out or None


DETECTORS = (detect_collapse_onset, detect_nonfinite, detect_entropy_collapse, detect_length_collapse,
             detect_length_hacking, detect_zero_std, detect_clipped, detect_kl_blowup, detect_sampling_drift,
             detect_tool_failures, detect_stalled_phi)


def health(frames: Sequence[Frame], settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"status": "ok"|"warn"|"bad"|"empty", "findings": [Finding.to_dict(), …]}``; ``empty`` when there
    are no frames at all (nothing to be healthy about: never ``ok``). The status counts the findings still open;
    a recovered one stays listed with ``recovered_at``. ``settings`` (the run's resolved carl config, when known)
    keeps hints from suggesting what is already in force."""
    if not frames:
        return {"status": "empty", "findings": []}
    with columns_cached(frames):
        findings = [f for det in DETECTORS for f in det(frames)]
    if settings:
        findings = [_fit_hint(f, settings) for f in findings]
    live = [f for f in findings if f.open]
    status = "bad" if any(f.severity == "bad" for f in live) else "warn" if live else "ok"
    return {"status": status, "findings": [f.to_dict() for f in findings]}


def _setting(settings: dict[str, Any], dotted: str) -> Any:
    cur: Any = settings
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _fit_hint(f: Finding, settings: dict[str, Any]) -> Finding:
    """The collapse.onset hint names only the cascade settings the run does not already have."""
    if f.code != "collapse.onset":
        return f
    missing = [f"{k}: {v}" for k, v in (("cascade.combine", "varied_groups"), ("cascade.on_collapse", "close_gate"))
               if _setting(settings, k) != v]
    if missing:
        hint = ("The policy is collapsing onto a few answers while the task reward is flat: stop, or keep CARL out "
                f"of tied groups ({', '.join(missing)}).")
    else:
        hint = ("The policy is collapsing onto a few answers while the task reward is flat (varied_groups and "
                "close_gate are already set): stop and resume from an earlier checkpoint with a lower learning "
                "rate or a smaller CARL weight (cascade.carl_cap).")
    from dataclasses import replace

    return replace(f, hint=hint)


# ── summary ───────────────────────────────────────────────────────────────────────────────────────────


def metric_names(frames: Iterable[Frame]) -> list[str]:
    """Names of every metric present in the frames: Frame scalars in Frame order, then rewards/<fn>,
    carl/<component> and extra keys, each group sorted. (One C-level pass per field: no Python code per frame.)"""
    frames = frames if isinstance(frames, (list, tuple)) else list(frames)
    not_none = partial(is_not, None)
    present = {name for name in SCALAR_FIELDS
               if (frames and getattr(frames[0], name) is not None)
               or any(map(not_none, map(attrgetter(name), frames)))}

    def keys(attr: str) -> set[str]:
        return set().union(*filter(None, map(attrgetter(attr), frames)))

    return ([n for n in SCALAR_FIELDS if n in present and n != "timestamp"]
            + [f"rewards/{n}" for n in sorted(keys("rewards"))] + [f"carl/{n}" for n in sorted(keys("carl_components"))]
            + sorted(keys("extra")))


def _metric_names_cached(frames: Sequence[Frame]) -> list[str]:
    names = metric_names(frames)
    cached = _COLUMNS.get(id(frames))
    if cached is not None and cached[0] is frames:
        cached[1]["\0names"] = set(names)
    return names


def phi_stats(frames: Sequence[Frame]) -> dict[str, float] | None:
    _, phis = series(frames, "phi")
    if not phis:
        return None
    return {"first": phis[0], "last": phis[-1], "min": min(phis), "max": max(phis), "mean": sum(phis) / len(phis)}


def phase_reason(frames: Sequence[Frame]) -> str | None:
    from engine.observe import trajectory as _phase

    steps, phis = series(frames, "phi")
    return _phase.phase_reason(phis, steps, crystallization_index(phis))


def _steps_in_order(frames: Sequence[Frame]) -> Any:
    """The frames' steps as an array when they are in order (an empty tuple for a short list), None when some
    frame has a smaller step than the one before it."""
    if len(frames) > 64:
        import numpy as np

        try:
            steps = np.fromiter(map(_STEP, frames), dtype=np.int64, count=len(frames))
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            return None if (steps[1:] < steps[:-1]).any() else steps
    return None if any(a.step > b.step for a, b in zip(frames, frames[1:])) else ()


def summarize(frames: Sequence[Frame], *, source: str, run: str | None, skipped: int = 0,
              settings: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The `carl --batch observe` object (../shared/CONTRACT.md §observe)."""
    steps = _steps_in_order(frames)
    if steps is None:
        frames = sorted(frames, key=lambda f: f.step)
    with columns_cached(frames), _gc_paused():
        if steps is not None and len(steps):
            _COLUMNS[id(frames)][1]["\0steps"] = steps  # the order check's steps are the summary's
        out: dict[str, Any] = {
            "source": source,
            "run": run,
            "n_frames": len(frames),
            "first_step": frames[0].step if frames else None,
            "last_step": frames[-1].step if frames else None,
            "metrics": _metric_names_cached(frames),
            "phi": phi_stats(frames),
            "phase": phase(frames),
            "phase_reason": phase_reason(frames) if frames else None,
            "crystallization_step": crystallization_step(frames),
            "health": health(frames, settings),
            "signals": trl_signals(frames),
            "skipped_lines": skipped,
        }
    if any(m.startswith(("agent/", "tools/")) for m in out["metrics"]):
        from engine.envs.metrics import agent_summary

        agent = agent_summary(frames)  # agent runs only: task completion, tool format, tool calls per task
        if agent is not None:
            out["agent"] = agent
    out.update(extra)
    return out

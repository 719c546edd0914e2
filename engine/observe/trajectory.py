"""Phase and crystallization step from change-points in a run's own Phi trajectory (issue 16).

An absolute threshold says nothing on real models: Phi = 1 − H/log V, and log V is ~12 nats at a 152k
vocabulary, so Phi ≥ SIGMA = 3/16 holds for any trained LM from step 1. What a run's Phi trajectory can say
is whether, and when, it **moved away from where it started**. Computed per frame (windows count frames):

* the start: Φ₀ = median of the first ``BASELINE`` Phi values, its noise s = their standard deviation, at least
  ``NOISE_FLOOR``;
* a one-sided CUSUM change-point detector (Page 1954) for a rise: S₀ = 0,
  S_i = max(0, S_{i−1} + min(Φ_i − Φ₀, CLIP·s) − K·s); the rise is detected when S_i > H·s (one frame adds
  at most 3·s, so a spike shorter than three frames is not a change-point). The **crystallization
  step** is the change-point — the frame right after S was last 0 before it crossed — i.e. where the rise
  began, not where it became certain (``K`` = 1, ``H`` = 8: only a rise of more than one baseline standard
  deviation counts — a drift within the noise, like a sparse run's, does not — and a 2-s shift is found in
  ~8 frames);
* **guessing**: no rise detected yet (fewer than ``BASELINE + 1`` frames, a flat trajectory, or Phi back within
  K·s of its start over the last ``TREND_WINDOW`` frames);
* **crystallizing**: a rise was detected and Phi is still rising — the mean of the last ``TREND_WINDOW`` values
  exceeds the mean of the ``TREND_WINDOW`` before them by more than ``RISING`` · s and by more than
  ``RISING_FRACTION`` of the rise so far (or the rise is younger than two windows);
* **knowing**: a rise was detected and Phi has levelled off above its start.

SIGMA (3/16) stays on the charts as the probe's reference line; it no longer decides the phase. A collapsing
run also crystallizes — its Phi rises fast — which is why the collapse early warning (collapse.onset) is a
separate finding.
"""

from __future__ import annotations

from statistics import median, pstdev
from typing import Sequence

BASELINE = 10
NOISE_FLOOR = 0.005
K = 1.0
H = 8.0
TREND_WINDOW = 10
RISING = 1.5
RISING_FRACTION = 0.1
CLIP = 4.0  # one frame adds at most (CLIP − K)·s to the CUSUM: a spike of a few frames is not a change-point


def start_level(phis: Sequence[float]) -> tuple[float, float] | None:
    """(Φ₀, s) from the first BASELINE values; None when there are not more than BASELINE values."""
    if len(phis) <= BASELINE:
        return None
    first = list(phis[:BASELINE])
    return median(first), max(pstdev(first), NOISE_FLOOR)


def change_point(phis: Sequence[float]) -> int | None:
    """Index where the first detected rise of Phi above its start began (see the module docstring)."""
    st = start_level(phis)
    if st is None:
        return None
    phi0, s = st
    acc = 0.0
    began = BASELINE
    for i in range(BASELINE, len(phis)):
        acc = max(0.0, acc + min(phis[i] - phi0, CLIP * s) - K * s)
        if acc == 0.0:
            began = i + 1
        elif acc > H * s:
            return min(began, i)
    return None


_UNSET: object = object()


def phase_of(phis: Sequence[float], cp: object = _UNSET) -> str | None:
    """``cp``, when given, is ``change_point(phis)`` already computed (a long run's summary asks once)."""
    if not phis:
        return None
    st = start_level(phis)
    cp = change_point(phis) if cp is _UNSET else cp
    if st is None or cp is None:
        return "guessing"
    phi0, s = st
    recent = list(phis[-TREND_WINDOW:])
    level = sum(recent) / len(recent)
    if level - phi0 <= K * s:
        return "guessing"
    before = list(phis[-2 * TREND_WINDOW: -TREND_WINDOW])
    if len(before) == TREND_WINDOW and level - sum(before) / TREND_WINDOW > max(RISING * s,
                                                                             RISING_FRACTION * (level - phi0)):
        return "crystallizing"
    if len(before) < TREND_WINDOW:  # the rise is too recent to tell a plateau
        return "crystallizing"
    return "knowing"


def phase_reason(phis: Sequence[float], steps: Sequence[int] | None = None, cp: object = _UNSET) -> str | None:
    """One line saying why :func:`phase_of` gave its label (the screens show it next to the phase)."""
    if not phis:
        return "no Φ logged (no entropy with a known vocabulary size)"
    at = (lambda i: f"step {steps[i]}") if steps is not None else (lambda i: f"frame {i}")
    st = start_level(phis)
    if st is None:
        return f"{len(phis)} Φ values: the start needs {BASELINE + 1} before a rise can count"
    phi0, s = st
    cp = change_point(phis) if cp is _UNSET else cp
    if cp is None:
        return f"no sustained rise of Φ above its start ({phi0:.3f} ± {s:.3f})"
    label = phase_of(phis, cp)
    recent = list(phis[-TREND_WINDOW:])
    level = sum(recent) / len(recent)
    if label == "guessing":
        return f"Φ rose at {at(cp)} but is back within noise of its start ({level:.3f} vs {phi0:.3f})"
    if label == "crystallizing":
        return f"Φ rising since {at(cp)}: {phi0:.3f} → {level:.3f}"
    return f"Φ rose from {phi0:.3f} at {at(cp)} and levelled off at {level:.3f}"

"""engine.observe.view: EMA smoothing, x-axis (step / wall time), log-y, overlay alignment and the run-diff
numbers beside an overlay, TRL metrics first among the choices — on the frames of a real TRL run too."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.frames import Frame
from engine.observe import TrainerStateSource
from engine.observe.analysis import metric_names
from engine.observe.view import (MAX_OVERLAY, SMOOTHING_LEVELS, View, ema, metric_choices, overlay, overlay_diff,
                                 series_of)

TRL_STATE = Path(__file__).parent / "data" / "trl_grpo" / "trainer_state.json"


def test_ema_is_bias_corrected_and_zero_is_raw():
    assert ema([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    out = ema([4.0, 4.0, 4.0], 0.9)
    assert out == pytest.approx([4.0, 4.0, 4.0])  # a constant stays constant from the first point
    m1 = 0.1 * 1.0
    m2 = 0.9 * m1 + 0.1 * 3.0
    assert ema([1.0, 3.0], 0.9) == pytest.approx([m1 / 0.1, m2 / (1 - 0.81)])
    with pytest.raises(ValueError):
        ema([1.0], 1.0)


def test_view_keys_cycle():
    v = View()
    seen = []
    for _ in SMOOTHING_LEVELS:
        v = v.next_smoothing()
        seen.append(v.smoothing)
    assert seen == [0.6, 0.9, 0.99, 0.0]
    assert View().next_x().x == "wall" and View().next_x().next_x().x == "step"
    assert View().toggle_log().log_y and View().is_default and not View(log_y=True).is_default
    assert View(smoothing=0.9, x="wall", log_y=True).describe() == "EMA 0.9 · x wall s · log y"


def test_series_wall_time_and_log_y():
    frames = [Frame(step=s, kl=v, timestamp=ts) for s, v, ts in
              ((1, 0.5, 100.0), (2, 0.0, 101.5), (3, float("nan"), 102.0), (4, 2.0, None), (5, 1.0, 110.0))]
    s = series_of(frames, "kl")
    assert s.xs == [1, 2, 4, 5] and s.ys == [0.5, 0.0, 2.0, 1.0] and s.dropped == 0
    w = series_of(frames, "kl", View(x="wall"))
    assert w.xs == [0.0, 1.5, 10.0] and w.dropped == 1  # step 4 has no timestamp
    lg = series_of(frames, "kl", View(log_y=True))
    assert lg.xs == [1, 4, 5] and lg.dropped == 1  # 0.0 cannot be drawn on a log axis
    sm = series_of(frames, "kl", View(smoothing=0.6))
    assert sm.ys == pytest.approx(ema([0.5, 0.0, 2.0, 1.0], 0.6))
    assert series_of([Frame(step=1, kl=1.0)], "kl", View(x="wall")).note.startswith("no timestamps")


def test_overlay_aligns_runs_on_their_own_start_and_diffs_against_the_first():
    a = [Frame(step=s, phi=0.1 * s, reward_mean=float(s), timestamp=1000.0 + s) for s in range(1, 6)]
    b = [Frame(step=s, phi=0.1 * s + 0.05, reward_mean=2.0 * s, timestamp=5000.0 + 2 * s) for s in range(3, 9)]
    lines = overlay([("a", a), ("b", b)], "reward_mean", View(x="wall"))
    assert [x.label for x in lines] == ["a", "b"]
    assert lines[0].xs[0] == 0.0 and lines[1].xs[0] == 0.0 and lines[1].xs[-1] == 10.0
    rows = overlay_diff([("a", a), ("b", b)], "reward_mean")
    (r,) = rows
    assert r["label"] == "b" and r["reference"] == "a" and r["aligned_steps"] == 3  # steps 3, 4, 5
    assert r["metric"]["mean_delta"] == pytest.approx(((6 - 3) + (8 - 4) + (10 - 5)) / 3)
    assert r["metric"]["last_delta"] == pytest.approx(5.0) and r["phi"]["mean_delta"] == pytest.approx(0.05)
    with pytest.raises(ValueError):
        overlay([("r", a)] * (MAX_OVERLAY + 1), "phi")


def test_trl_metrics_come_first_and_are_selectable_on_a_real_run():
    frames, _ = TrainerStateSource(TRL_STATE).load()
    choices = metric_choices(metric_names(frames), exclude=("phi",))
    assert choices[:4] == ["frac_reward_zero_std", "clipped_ratio", "kl", "grad_norm"]
    for name in choices[:4]:
        s = series_of(frames, name, View(smoothing=0.9))
        assert len(s.xs) == len(frames) == 8  # every step of the real run carries it

"""The cascade gates on synthetic metric streams."""

from __future__ import annotations

import numpy as np
import pytest

from engine.cascade import (AlwaysOpen, Cascade, CrystallizationGate, FixedGate, PercentileGate, make_gate,
                            percentile)
from engine.config import CascadeSection
from engine.errors import ConfigError


def feed(gate, values, key="exact"):
    """Feed one value per step (steps 1..n); return the step it opened at (or None)."""
    for step, v in enumerate(values, start=1):
        if gate.observe(step, {key: v}):
            return step
    return None


def test_percentile_matches_numpy():
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 30):
        xs = list(rng.normal(size=n))
        for q in (0.0, 0.25, 0.6, 1.0):
            assert percentile(xs, q) == pytest.approx(float(np.quantile(xs, q)))


def test_metric_gate_never_opens_on_all_zero_rewards():
    g = PercentileGate("exact", q=0.6, min_steps=5, window=5, min_above=3)
    assert feed(g, [0.0] * 500) is None
    assert not g.is_open and g.threshold == 0.0


def test_metric_gate_waits_for_min_steps_then_opens_on_sustained_signal():
    g = PercentileGate("exact", q=0.6, min_steps=5, window=5, min_above=3)
    # steps 1-4 alone never open it (min_steps); a sustained rise does
    stream = [0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.2, 0.3, 0.3, 0.4, 0.5]
    opened = feed(g, stream)
    # by hand: at step 9 history=[0,0,.1,0,0,0,.2,.3,.3], threshold=quantile(.6)=0.16; last 5 = [0,0,.2,.3,.3]
    # → 3 values ≥ 0.16 and > 0 → opens at step 9
    assert opened == 9
    assert g.detail["threshold"] == pytest.approx(float(np.quantile(stream[:9], 0.6)))
    assert g.detail["above"] == 3


def test_metric_gate_single_spike_is_not_enough():
    g = PercentileGate("exact", q=0.6, min_steps=5, window=5, min_above=3)
    assert feed(g, [0, 0, 0, 0, 0, 0.5, 0, 0, 0, 0, 0, 0]) is None


def test_metric_gate_ignores_missing_and_repeated_steps():
    g = PercentileGate("exact", min_steps=2, window=2, min_above=2)
    assert not g.observe(1, {"other": 1.0})
    assert not g.observe(2, {"exact": float("nan")})
    assert not g.observe(3, {"exact": 1.0})
    assert not g.observe(3, {"exact": 1.0})  # the same step again is no new evidence
    assert g.history == [1.0]
    assert g.observe(4, {"exact": 1.0})
    assert g.opened_at == 4


def test_fixed_crystallization_and_off_gates():
    assert feed(FixedGate(4), [0] * 10) == 4
    cg = CrystallizationGate(window=3, threshold=2.0)
    assert feed(cg, [0.5, 0.5, 0.5, 1.0, 0.0], key="crystallization") == 4  # 0.5+0.5+1.0 = 2
    assert feed(CrystallizationGate(window=3, threshold=5.0), [1.0] * 20, key="crystallization") is None
    assert feed(AlwaysOpen(), [0.0]) == 1


def test_weight_warms_up_linearly_after_the_gate():
    c = Cascade(FixedGate(3), weight=2.0, warmup_steps=4)
    weights = []
    for step in range(1, 9):
        c.observe(step, {})
        weights.append(c.carl_weight(step))
    assert weights == [0, 0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert c.stage == "B"
    assert c.combine([1.0, 0.5], 4) == [1.0, 0.5]


def test_gate_state_round_trips_for_resume():
    g = PercentileGate("exact", min_steps=3, window=3, min_above=2)
    feed(g, [0.0, 0.1, 0.0])
    c = Cascade(g, 1.0, 2)
    d = c.state_dict()
    g2 = PercentileGate("exact", min_steps=3, window=3, min_above=2)
    c2 = Cascade(g2, 1.0, 2)
    c2.load_state_dict(d)
    assert g2.history == [0.0, 0.1, 0.0] and g2.last_step == 3
    assert c2.observe(4, {"exact": 0.2}) is not None  # continues where it left off
    assert c2.gate.opened_at == 4


def test_make_gate_modes():
    assert isinstance(make_gate(CascadeSection(), "exact"), PercentileGate)
    assert make_gate(CascadeSection(mode="percentile"), "exact").mode == "percentile"
    assert isinstance(make_gate(CascadeSection(mode="fixed", fixed_step=2), "exact"), FixedGate)
    assert isinstance(make_gate(CascadeSection(mode="off"), "exact"), AlwaysOpen)
    with pytest.raises(ConfigError):
        make_gate(CascadeSection(mode="evidence"), "exact")

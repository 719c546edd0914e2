"""The cascade gates on synthetic metric streams."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.cascade import (AlwaysOpen, Cascade, CrystallizationGate, EvidenceGate, FixedGate, PercentileGate,
                            combine_varied_groups, make_gate, percentile, wilson_lower, _std)
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
    assert isinstance(make_gate(CascadeSection(), "exact"), EvidenceGate)  # the default (docs/cascade.md)
    assert CascadeSection().combine == "varied_groups"
    assert isinstance(make_gate(CascadeSection(mode="metric"), "exact"), PercentileGate)
    assert make_gate(CascadeSection(mode="percentile"), "exact").mode == "percentile"
    assert isinstance(make_gate(CascadeSection(mode="fixed", fixed_step=2), "exact"), FixedGate)
    assert isinstance(make_gate(CascadeSection(mode="off"), "exact"), AlwaysOpen)
    ev = make_gate(CascadeSection(mode="evidence", evidence_floor=0.2, evidence_window=7), "exact")
    assert isinstance(ev, EvidenceGate) and (ev.floor, ev.window, ev.consecutive) == (0.2, 7, 3)
    with pytest.raises(ConfigError):
        make_gate(CascadeSection.model_construct(mode="nonsense"), "exact")


# ------------------------------------------------------------------------------------------- evidence gate
def test_wilson_lower_bound_matches_the_formula():
    # by hand: p = 0.2, n = 100, z = 1.96 -> (0.2 + 0.019208 - 1.96*sqrt(0.0016 + 0.00009604)) / 1.038416
    want = (0.2 + 1.96 ** 2 / 200 - 1.96 * (0.2 * 0.8 / 100 + 1.96 ** 2 / 40000) ** 0.5) / (1 + 1.96 ** 2 / 100)
    assert wilson_lower(20, 100) == pytest.approx(want) == pytest.approx(0.1334, abs=1e-4)
    assert wilson_lower(0, 100) == 0.0 and wilson_lower(0, 0) == 0.0
    assert wilson_lower(100, 100) < 1.0


def feed_n(gate, values, n=32):
    for step, v in enumerate(values, start=1):
        if gate.observe(step, {"exact": v, "n": n}):
            return step
    return None


def test_evidence_gate_stays_closed_on_rare_lucky_successes():
    rng = np.random.default_rng(0)
    # a sparse run: ~3% success per batch of 32, with lucky batches of 3-4 successes now and then
    stream = list(rng.binomial(32, 0.03, size=400) / 32)
    stream[50:52] = [4 / 32, 3 / 32]
    g = EvidenceGate("exact", floor=0.1, window=10, consecutive=3)
    assert feed_n(g, stream) is None
    # the percentile gate (upstream style) opens on the same stream
    assert feed(PercentileGate("exact"), stream) is not None
    # all-zero rewards never open it
    assert feed_n(EvidenceGate("exact"), [0.0] * 300) is None


def test_evidence_gate_opens_on_a_sustained_success_rate():
    rng = np.random.default_rng(1)
    stream = list(rng.binomial(32, 0.03, size=30) / 32) + list(rng.binomial(32, 0.3, size=40) / 32)
    g = EvidenceGate("exact", floor=0.1, window=10, consecutive=3)
    opened = feed_n(g, stream)
    assert opened is not None and 31 <= opened <= 45
    assert g.detail["lower_bound"] > 0.1 and g.detail["streak"] == 3 and g.detail["trials"] == 320


def test_evidence_gate_needs_a_full_window_and_consecutive_steps():
    g = EvidenceGate("exact", floor=0.1, window=4, consecutive=2)
    assert feed_n(g, [1.0, 1.0, 1.0]) is None  # window not yet full
    assert g.observe(4, {"exact": 1.0, "n": 32}) is False  # first step above the floor: streak 1
    assert g.observe(5, {"exact": 1.0, "n": 32}) is True


def test_evidence_gate_state_round_trips():
    g = EvidenceGate("exact", floor=0.1, window=3, consecutive=2)
    feed_n(g, [0.5, 0.5, 0.5])
    g2 = EvidenceGate("exact", floor=0.1, window=3, consecutive=2)
    g2.load_state_dict(g.state_dict())
    assert list(g2.recent) == list(g.recent) and g2.streak == 1
    assert g2.observe(4, {"exact": 0.5, "n": 32})


# ------------------------------------------------------------------------------------------- combination
def test_varied_groups_gives_no_carl_advantage_in_tied_groups_and_caps_it_elsewhere():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    group = 8
    cap = 0.25

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.floats(0, 1), min_size=group * 3, max_size=group * 3),
           st.lists(st.sampled_from([0.0, 1.0]), min_size=group * 3, max_size=group * 3),
           st.floats(0.01, 5.0), st.booleans())
    def check(carl, task, weight, tie_first):
        if tie_first:
            task = [task[0]] * group + task[group:]
        terms = combine_varied_groups(carl, task, group, weight, cap)
        for g in range(3):
            sl = slice(g * group, (g + 1) * group)
            tg = task[sl]
            if len(set(tg)) == 1:  # tied: no CARL term at all
                assert terms[sl] == [0.0] * group
            else:  # the formula's own bound, |d_i| / std(task + d) <= cap (on TRL's advantages: test_cascade_trl)
                d = [x - sum(terms[sl]) / group for x in terms[sl]]
                std_total = _std([t + x for t, x in zip(tg, terms[sl])])
                assert max(abs(x) for x in d) / std_total <= cap + 1e-9

    check()


def test_varied_groups_keeps_the_carl_ranking_and_a_small_spread_uncapped():
    carl = [0.80, 0.82, 0.78, 0.81]
    task = [1.0, 0.0, 0.0, 1.0]
    out = combine_varied_groups(carl, task, 4, 1.0, 0.25)
    assert sorted(range(4), key=lambda i: out[i]) == sorted(range(4), key=lambda i: carl[i])
    assert out == pytest.approx(carl)  # spread 0.04 is far below 0.25-ish of the task std (0.58): untouched
    c = Cascade(FixedGate(1), 1.0, 0, combine="varied_groups", group=4)
    c.observe(1, {})
    assert c.combine(carl + carl, 1, task + [0.0] * 4) == pytest.approx(carl + [0.0] * 4)
    assert c.last_tied_fraction == 0.5
    with pytest.raises(ValueError):
        c.combine(carl, 1, None)


def test_tied_groups_metric_counts_the_groups_that_got_no_carl():
    """A group holding an unscorable (NaN) task reward gets 0 like a tied one: the metric must count it."""
    carl = [0.80, 0.82, 0.78, 0.81] * 3
    task = [1.0, 0.0, 0.0, 1.0] + [1.0, float("nan"), 0.0, 1.0] + [0.0] * 4
    c = Cascade(FixedGate(1), 1.0, 0, combine="varied_groups", group=4)
    c.observe(1, {})
    out = c.combine(carl, 1, task)
    zeroed = [out[i: i + 4] == [0.0] * 4 for i in range(0, 12, 4)]
    assert zeroed == [False, True, True]
    assert c.last_tied_fraction == pytest.approx(2 / 3)


def test_the_evidence_gate_is_a_heuristic_with_a_measured_false_open_rate():
    """The real EvidenceGate fed binomial draws at a known true rate (bench/evidence_false_open.py; the docs quote
    its full run). Far below the floor it stays shut; AT the floor it opens often — it is no proof that the rate
    is above the floor, and clustered prompts (a prompt is solved by most of its G samples or by none) make it
    open sooner. Seeded: deterministic."""
    from bench.evidence_false_open import beta_rates, false_open

    sparse = false_open(beta_rates(0.03, math.inf), runs=120, steps=200)
    sparse_clustered = false_open(beta_rates(0.03, 1.0), runs=120, steps=200)
    at_floor = false_open(beta_rates(0.10, math.inf), runs=120, steps=200)
    at_floor_clustered = false_open(beta_rates(0.10, 1.0), runs=120, steps=200)
    assert sparse["false_open_rate"] == 0.0
    assert sparse_clustered["false_open_rate"] < 0.05
    assert 0.2 < at_floor["false_open_rate"] < 0.8
    assert at_floor_clustered["false_open_rate"] > 0.9

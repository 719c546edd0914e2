"""`eval.min_gain`: pass also requires the task metric to beat the starting model's by this much (CONTRACT,
outside-world round); unset, the gate is the absolute threshold alone; set with no known start, it fails closed."""

from __future__ import annotations

from engine.config import EvalSection, validate_dict
from engine.trainer.evalgate import decide

HEALTHY = {"task_metric": 0.47, "phi_mean": 0.5, "distinct_fraction": 0.4, "top_answer_share": 0.1,
           "phi_spread": 0.05}


def test_min_gain_is_relative_to_the_start():
    gate = EvalSection(threshold=0.3, min_gain=0.05)
    ok, why = decide(HEALTHY, gate, before=0.33)
    assert ok and "start 0.330 + 0.05" in why
    ok, why = decide(HEALTHY, gate, before=0.45)
    assert not ok and "task metric 0.470 < start 0.450 + eval.min_gain 0.05" in why


def test_min_gain_with_no_known_start_fails_closed_and_unset_changes_nothing():
    ok, why = decide(HEALTHY, EvalSection(threshold=0.3, min_gain=0.05))
    assert not ok and "starting model's task metric is unknown" in why
    assert decide(HEALTHY, EvalSection(threshold=0.3))[0]
    assert not decide(HEALTHY, EvalSection())[0]  # the absolute 0.5 alone


def test_min_gain_is_a_config_field():
    cfg = validate_dict({"eval": {"min_gain": 0.1}})
    assert cfg.eval.min_gain == 0.1 and validate_dict({}).eval.min_gain is None

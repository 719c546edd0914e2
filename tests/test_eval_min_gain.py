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
    own_task = {"model": {"name_or_path": "gpt2"}, "dataset": {"source": "rows.jsonl"}}
    assert cfg.eval.min_gain == 0.1 and validate_dict(own_task).eval.min_gain is None


def test_the_demo_gate_is_relative_to_its_start_and_yields_to_any_choice():
    """The demo's task (builtin:addition; its gate comes from engine.builtins) passes when it reaches 0.3 and loses nothing over its start:
    `carl --batch train --send-it` on a fresh CARL_HOME measured before 0.435 → after 0.460 (2026-12-07)."""
    from engine.config import Config, preset

    demo = Config().eval
    assert (demo.threshold, demo.min_gain) == (0.3, 0.0)
    assert decide({**HEALTHY, "task_metric": 0.460}, demo, before=0.435)[0]
    assert not decide({**HEALTHY, "task_metric": 0.40}, demo, before=0.435)[0]  # worse than its start
    assert validate_dict({"eval": {"threshold": 0.5}}).eval.min_gain is None  # a choice is kept as made
    assert preset("lora-7b").eval.threshold == 0.5 and preset("lora-7b").eval.min_gain is None

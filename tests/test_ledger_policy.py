"""Policy decisions: allow / deny / needs_approval with the deciding rule; budget from the ledger's own spend."""

from __future__ import annotations

import pytest

from engine import ledger
from engine.config import Config, validate_dict
from engine.errors import ConfigError, ValidationError
from engine.ledger import policy

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
SUBMIT = {"kind": "remote.submit", "backend": "hf", "flavor": "a10g-large", "estimated_usd": 3.2}


def _d(action, config=None, **kw):
    kw.setdefault("spent_today", 0.0)
    return ledger.evaluate(action, config, **kw)


def test_paid_compute_needs_approval_then_is_allowed():
    d = _d(SUBMIT)
    assert (d.decision, d.rule) == ("needs_approval", "paid_needs_approval")
    assert d.context["estimated_usd"] == 3.2 and d.context["max_usd_per_job"] == 10.0
    d = _d({**SUBMIT, "approved": True})
    assert (d.decision, d.rule) == ("allow", "default") and d.allowed
    d = _d(SUBMIT, {"paid_needs_approval": False})
    assert d.decision == "allow"


def test_local_run_is_allowed_and_a_paid_run_needs_approval():
    assert _d({"kind": "run.start", "paid": False}).decision == "allow"
    assert _d({"kind": "run.start", "paid": True}).rule == "paid_needs_approval"
    assert _d({"kind": "run.start", "estimated_usd": 1.0}).rule == "paid_needs_approval"


def test_budget_caps_per_job_and_per_day_from_config_budget():
    cfg = validate_dict({"budget": {"max_usd_per_job": 5, "max_usd_per_day": 8}})
    d = _d({**SUBMIT, "estimated_usd": 6, "approved": True}, cfg)
    assert (d.decision, d.rule) == ("deny", "budget.max_usd_per_job")
    d = _d({**SUBMIT, "estimated_usd": 4, "approved": True}, cfg, spent_today=4.5)
    assert (d.decision, d.rule) == ("deny", "budget.max_usd_per_day")
    assert d.context["spent_today_usd"] == 4.5
    assert _d({**SUBMIT, "estimated_usd": 4, "approved": True}, cfg, spent_today=4.0).decision == "allow"
    # the policy section overrides the budget section
    cfg2 = validate_dict({"budget": {"max_usd_per_job": 5}, "policy": {"max_usd_per_job": 50}})
    assert _d({**SUBMIT, "estimated_usd": 6, "approved": True}, cfg2).decision == "allow"


def test_allowed_backends_and_flavors():
    pol = {"allowed_backends": ["hf"], "allowed_flavors": {"hf": ["t4-small", "a10g-large"]}}
    assert _d({**SUBMIT, "backend": "runpod"}, pol).rule == "allowed_backends"
    d = _d({**SUBMIT, "flavor": "h100x8"}, pol)
    assert (d.decision, d.rule) == ("deny", "allowed_flavors") and d.context["allowed"] == ["t4-small", "a10g-large"]
    assert _d(SUBMIT, pol).decision == "needs_approval"


def test_push_only_after_a_passed_eval():
    assert _d({"kind": "push"}).rule == "push_requires_eval"
    assert _d({"kind": "push", "eval_passed": False}).decision == "deny"
    assert _d({"kind": "push", "eval_passed": True}).decision == "allow"
    assert _d({"kind": "push"}, {"push_requires_eval": False}).decision == "allow"


def test_kinds_and_tools_lists_and_default():
    pol = {"deny_kinds": ["run.start"], "needs_approval_kinds": ["project.change"],
           "blocked_tools": ["delete_run"], "tools_need_approval": ["start_run"]}
    assert _d({"kind": "run.start"}, pol).rule == "deny_kinds"
    assert _d({"kind": "project.change"}, pol).decision == "needs_approval"
    assert _d({"kind": "project.change", "approved": True}, pol).decision == "allow"
    assert _d({"kind": "chat.tool_call", "tool": "delete_run"}, pol).rule == "blocked_tools"
    assert _d({"kind": "chat.tool_call", "tool": "start_run"}, pol).rule == "tools_need_approval"
    assert _d({"kind": "chat.tool_call", "tool": "list_runs"}, pol).decision == "allow"
    assert _d({"kind": "anything"}, {"default": "deny"}).decision == "deny"


def test_bad_policy_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError) as ei:
        ledger.evaluate({"kind": "push"}, {"alowed_backends": ["hf"]})
    assert "policy.alowed_backends" in ei.value.message
    with pytest.raises(ConfigError) as ei:
        ledger.evaluate({"kind": "push"}, Config(policy={"allowed_flavors": {"hf": "t4"}}))
    assert "policy.allowed_flavors.hf" in ei.value.message
    with pytest.raises(ConfigError, match="policy.max_usd_per_day"):
        policy.load_policy({"max_usd_per_day": -1})


def test_malformed_actions_are_validation_errors():
    for bad in ([1], {"backend": "hf"}, {"kind": ""}, {"kind": "remote.submit", "estimated_usd": 1},
                {"kind": "remote.submit", "backend": "hf"}, {"kind": "run.start", "estimated_usd": "3"},
                {"kind": "run.start", "estimated_usd": -1}):
        with pytest.raises(ValidationError):
            ledger.evaluate(bad, None)  # type: ignore[arg-type]


def test_spend_today_is_read_from_the_ledger(monkeypatch):
    from engine.ledger import chain

    yesterday = T0 - 86400
    ledger.record("job.submit", {"job_id": "old", "estimated_usd": 20.0}, ts=yesterday)
    ledger.record("approval", {"job_id": "j1", "estimated_usd": 6.0}, ts=T0)
    ledger.record("job.submit", {"job_id": "j1", "estimated_usd": 6.0, "backend": "hf"}, ts=T0 + 1)
    ledger.record("job.submit", {"job_id": "j1", "estimated_usd": 6.0, "deduplicated": True}, ts=T0 + 1.5)
    ledger.record("approval", {"estimated_usd": 2.0}, ts=T0 + 2)  # approved, not (yet) submitted
    ledger.record("run.start", {"estimated_usd": 100.0}, ts=T0 + 3)  # not a spend action
    assert policy.spend_today(ledger.Ledger().iter_blocks(), now=T0 + 10) == 8.0
    monkeypatch.setattr(chain, "clock", lambda: T0 + 10)
    cfg = validate_dict({"budget": {"max_usd_per_day": 12}})
    d = ledger.evaluate({**SUBMIT, "estimated_usd": 5, "approved": True}, cfg)
    assert (d.decision, d.rule) == ("deny", "budget.max_usd_per_day") and d.context["spent_today_usd"] == 8.0
    assert ledger.evaluate({**SUBMIT, "estimated_usd": 4, "approved": True}, cfg).decision == "allow"
    # evaluating appends nothing
    assert ledger.Ledger().status()["blocks"] == 7


def test_spend_reads_only_recent_segments():
    led = ledger.Ledger(segment_bytes=900)
    for d in range(4):
        for i in range(3):
            led.append("job.submit", {"job_id": f"d{d}-{i}", "estimated_usd": 1.0}, ts=T0 - 86400 * (3 - d) + i)
    assert len(led.segments()) > 4
    recent = list(led.iter_blocks(since_ts="2025-06-15"))
    assert {b["payload"]["job_id"] for b in recent if b["ts"] >= "2025-06-15"} == {"d3-0", "d3-1", "d3-2"}
    assert len(recent) < 13
    assert ledger.evaluate({**SUBMIT, "approved": True}, None, now=T0 + 10).context["spent_today_usd"] == 3.0

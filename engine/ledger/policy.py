"""Policy: may this action go ahead? ``allow``, ``deny`` or ``needs_approval``, with the rule that decided.

The policy lives in carl.yaml's ``policy:`` section (validated here, ``extra="forbid"``); the money caps default
to carl.yaml's ``budget:`` section (``max_usd_per_job``, ``max_usd_per_day``). Actions are JSON objects with a
``kind`` (see docs/ledger.md for each kind's fields)::

    {"kind": "remote.submit", "backend": "hf", "flavor": "a10g-large", "estimated_usd": 3.2, "approved": false}
    {"kind": "run.start", "paid": false}
    {"kind": "push", "eval_passed": true}
    {"kind": "chat.tool_call", "tool": "start_run", "approved": false}

Rules are checked in a fixed order and the first that decides wins (``rule`` names it):

1. ``deny_kinds``                 — the kind is listed: deny.
2. ``allowed_backends``           — remote.submit to a backend not listed: deny.
3. ``allowed_flavors``            — remote.submit with a flavor not listed for its backend: deny.
4. ``budget.max_usd_per_job``     — estimated_usd above the per-job cap: deny.
5. ``budget.max_usd_per_day``     — today's spend (UTC day, from the ledger) + estimated_usd above the cap: deny.
6. ``push_requires_eval``         — push without ``eval_passed: true``: deny.
7. ``blocked_tools``              — chat.tool_call of a listed tool: deny.
8. ``paid_needs_approval``        — paid compute (remote.submit, run.start with paid/estimated_usd > 0) not
                                    ``approved``: needs_approval.
9. ``needs_approval_kinds`` / ``tools_need_approval`` — listed and not ``approved``: needs_approval.
10. ``default``                   — otherwise the policy's default decision (allow).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import ValidationError

DecisionName = Literal["allow", "deny", "needs_approval"]
PAID_KINDS = ("remote.submit", "job.submit")
SPEND_ACTIONS = ("job.submit", "approval")


class PolicyModel(BaseModel):
    """carl.yaml ``policy:``."""

    model_config = ConfigDict(extra="forbid")

    paid_needs_approval: bool = Field(True, description="paid compute needs an explicit approval")
    allowed_backends: list[str] | None = Field(None, description="remote backends allowed (None: any)")
    allowed_flavors: dict[str, list[str]] | None = Field(
        None, description="per backend, the hardware flavors allowed (a backend not listed: any flavor)")
    max_usd_per_job: float | None = Field(None, ge=0, description="default: budget.max_usd_per_job")
    max_usd_per_day: float | None = Field(None, ge=0, description="default: budget.max_usd_per_day")
    push_requires_eval: bool = Field(True, description="push only after a passed eval gate")
    deny_kinds: list[str] = Field(default_factory=list, description="action kinds always denied")
    needs_approval_kinds: list[str] = Field(default_factory=list, description="action kinds needing approval")
    blocked_tools: list[str] = Field(default_factory=list, description="chat tools never allowed")
    tools_need_approval: list[str] = Field(default_factory=list, description="chat tools needing approval")
    default: DecisionName = "allow"


@dataclass
class Decision:
    decision: DecisionName
    rule: str
    reason: str
    kind: str
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_policy(section: Any) -> PolicyModel:
    """Validate a ``policy:`` mapping. ``carl.config`` naming the field path (``policy.allowed_backends``)."""
    from engine.config import validate_section

    return validate_section(PolicyModel, section, "policy",
                            "Fix the named policy field(s) in carl.yaml (see docs/ledger.md).")


def resolve(config: Any) -> tuple[PolicyModel, float, float]:
    """(policy, max_usd_per_job, max_usd_per_day) from a Config, a ``policy:`` dict, a PolicyModel or None."""
    from engine.config import BudgetSection, Config

    budget = BudgetSection()
    if isinstance(config, Config):
        policy, budget = load_policy(config.policy), config.budget
    else:
        policy = load_policy(config)
    per_job = policy.max_usd_per_job if policy.max_usd_per_job is not None else budget.max_usd_per_job
    per_day = policy.max_usd_per_day if policy.max_usd_per_day is not None else budget.max_usd_per_day
    return policy, float(per_job), float(per_day)


def _num(action: dict[str, Any], key: str) -> float | None:
    v = action.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValidationError(f"action.{key} must be a number, got {v!r}", context={"field": key})
    if v < 0:
        raise ValidationError(f"action.{key} must be ≥ 0, got {v!r}", context={"field": key})
    return float(v)


def spend_today(blocks: Iterable[dict[str, Any]], *, now: float | None = None) -> float:
    """USD committed today (UTC) by the ledger's own blocks: the ``estimated_usd`` of each ``job.submit``
    block (once per ``job_id``: a deduplicated re-submit counts once), plus that of each ``approval`` block
    whose ``job_id`` no ``job.submit`` of today names (an approval and the submit it allowed count once)."""
    import time as _time

    day = datetime.fromtimestamp(now if now is not None else _time.time(), timezone.utc).strftime("%Y-%m-%d")
    submitted: dict[str, float] = {}
    loose = 0.0
    approvals: list[tuple[str | None, float]] = []
    for b in blocks:
        if b.get("action") not in SPEND_ACTIONS or not str(b.get("ts", "")).startswith(day):
            continue
        p = b.get("payload") if isinstance(b.get("payload"), dict) else {}
        usd = p.get("estimated_usd", p.get("usd"))
        if isinstance(usd, bool) or not isinstance(usd, (int, float)):
            continue
        job = p.get("job_id")
        if b["action"] == "job.submit":
            if job:
                submitted[str(job)] = max(submitted.get(str(job), 0.0), float(usd))  # re-submits: once
            else:
                loose += float(usd)
        else:
            approvals.append((str(job) if job else None, float(usd)))
    total = loose + sum(submitted.values())
    total += sum(usd for job, usd in approvals if job is None or job not in submitted)
    return round(total, 6)


def evaluate(action: dict[str, Any], config: Any = None, *, spent_today: float | None = None,
             blocks: Iterable[dict[str, Any]] | None = None, now: float | None = None) -> Decision:
    """Decide ``action`` under the policy of ``config`` (Config, ``policy:`` dict, PolicyModel, or None for the
    defaults). Today's spend is ``spent_today`` if given, else computed from ``blocks`` (default: none; the
    package-level ``engine.ledger.evaluate`` reads the ledger)."""
    if not isinstance(action, dict):
        raise ValidationError("the action must be a JSON object with a 'kind'",
                              hint='Example: {"kind": "remote.submit", "backend": "hf", "estimated_usd": 3.2}')
    kind = action.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ValidationError("the action needs a 'kind' string", hint="Kinds: remote.submit, run.start, push, "
                              "chat.tool_call, or any ledger action name.", context={"action": action})
    policy, per_job, per_day = resolve(config)
    approved = action.get("approved") is True
    est = _num(action, "estimated_usd")
    ctx: dict[str, Any] = {"approved": approved}

    def d(decision: DecisionName, rule: str, reason: str, **extra: Any) -> Decision:
        return Decision(decision, rule, reason, kind, {**ctx, **extra})

    if kind in policy.deny_kinds:
        return d("deny", "deny_kinds", f"{kind} is denied by the policy")

    is_remote = kind in PAID_KINDS
    paid = is_remote or action.get("paid") is True or (est is not None and est > 0)
    if is_remote:
        backend = action.get("backend")
        if not isinstance(backend, str) or not backend:
            raise ValidationError(f"{kind} needs a 'backend'", context={"field": "backend"})
        flavor = action.get("flavor")
        ctx.update(backend=backend, flavor=flavor)
        if policy.allowed_backends is not None and backend not in policy.allowed_backends:
            return d("deny", "allowed_backends", f"backend {backend} is not in policy.allowed_backends",
                     allowed=policy.allowed_backends)
        if policy.allowed_flavors and backend in policy.allowed_flavors:
            allowed = policy.allowed_flavors[backend]
            if flavor not in allowed:
                return d("deny", "allowed_flavors", f"flavor {flavor} is not allowed on {backend}", allowed=allowed)
        if est is None:
            raise ValidationError(f"{kind} needs 'estimated_usd' (the cost estimate) for the budget rules",
                                  context={"field": "estimated_usd"})
    if paid and est is not None:
        if spent_today is None:
            spent_today = spend_today(blocks or [], now=now)
        ctx.update(estimated_usd=est, max_usd_per_job=per_job, max_usd_per_day=per_day,
                   spent_today_usd=spent_today)
        if est > per_job:
            return d("deny", "budget.max_usd_per_job",
                     f"estimated ${est:.2f} exceeds the per-job cap ${per_job:.2f}")
        if spent_today + est > per_day:
            return d("deny", "budget.max_usd_per_day",
                     f"today's ${spent_today:.2f} + estimated ${est:.2f} exceeds the per-day cap ${per_day:.2f}")
    if kind == "push" and policy.push_requires_eval and action.get("eval_passed") is not True:
        return d("deny", "push_requires_eval", "push needs a passed eval gate (eval_passed: true)")
    tool = action.get("tool")
    if kind == "chat.tool_call" and tool in policy.blocked_tools:
        return d("deny", "blocked_tools", f"tool {tool} is blocked by the policy", tool=tool)
    if paid and policy.paid_needs_approval and not approved:
        return d("needs_approval", "paid_needs_approval", "paid compute needs an explicit approval")
    if kind in policy.needs_approval_kinds and not approved:
        return d("needs_approval", "needs_approval_kinds", f"{kind} needs an approval")
    if kind == "chat.tool_call" and tool in policy.tools_need_approval and not approved:
        return d("needs_approval", "tools_need_approval", f"tool {tool} needs an approval", tool=tool)
    if policy.default == "allow":
        why = "paid action approved within budget" if paid else "no rule restricts this action"
    else:
        why = f"the policy default is {policy.default}"
    return d(policy.default, "default", why)

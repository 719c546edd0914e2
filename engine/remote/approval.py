"""Cost estimate, budget and approval for remote jobs.

    estimated_usd = price_per_hour(backend, flavor) × gpu_count × hours

``price_per_hour`` comes from carl.yaml (``remote.prices``: ``"backend:flavor"`` first, then a bare
``"flavor"``), else from :data:`DEFAULT_PRICES` (USD/hour; RunPod's are per GPU). The defaults were not
re-checked against live list prices (docs/remote.md, "Prices"): check the provider's page and override them. ``hours`` is ``--hours``, else ``remote.hours``, else
``budget.max_hours``; it is also the job's hard timeout on the backend, so the estimate is an upper bound.

The decision is the ledger policy's (:func:`engine.ledger.evaluate` with ``{"kind": "remote.submit", …}``):
per-job and per-day caps (``budget:`` / ``policy:``; today's spend is read from the ledger) → ``carl.budget``;
other denials (backend/flavor not allowed) → ``carl.permission``; paid compute without an approval →
``carl.approval.required``. ``--budget USD`` lowers the per-job cap for one submit. All exit 5.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from engine import ledger
from engine.config import Config
from engine.errors import ApprovalRequired, BudgetError, ConfigError, PermissionDenied
from engine.home import CarlHome
from engine.remote.config import RemoteSettings

# USD per hour (RunPod: per GPU). Hugging Face Jobs bill per minute at these hourly rates.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "hf": {
        "cpu-basic": 0.01, "cpu-upgrade": 0.03, "cpu-performance": 0.19, "cpu-xl": 0.50,
        "t4-small": 0.40, "t4-medium": 0.60, "l4x1": 0.80, "l4x4": 3.80,
        "l40sx1": 1.80, "l40sx4": 8.30, "l40sx8": 23.50,
        "a10g-small": 1.00, "a10g-large": 1.50, "a10g-largex2": 3.00, "a10g-largex4": 5.00,
        "a100-large": 2.50, "a100x4": 10.00, "a100x8": 20.00,
        "h200": 5.00, "h200x2": 10.00, "h200x4": 20.00, "h200x8": 40.00,
    },
    "runpod": {
        "NVIDIA A100 80GB PCIe": 1.64, "NVIDIA A100-SXM4-80GB": 1.74, "NVIDIA H100 80GB HBM3": 2.99,
        "NVIDIA H100 PCIe": 2.39, "NVIDIA H200": 3.59, "NVIDIA L40S": 0.86, "NVIDIA RTX A6000": 0.49,
        "NVIDIA GeForce RTX 4090": 0.69, "NVIDIA RTX 6000 Ada Generation": 0.77,
    },
    "managed": {},
}


@dataclass
class Estimate:
    backend: str
    flavor: str
    gpu_count: int
    hours: float
    price_per_hour: float
    price_source: str  # "carl.yaml" or "default"
    estimated_usd: float
    max_usd_per_job: float
    max_usd_per_day: float
    spent_today_usd: float
    remaining_today_usd: float
    remaining_usd: float  # what this job may still cost: min(job cap, today's remainder, --budget)
    budget_usd: float | None  # --budget, when given
    within_budget: bool
    decision: str  # the ledger policy's: allow / deny / needs_approval
    rule: str
    reason: str
    currency: str = "USD"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def price_per_hour(rs: RemoteSettings, backend: str, flavor: str) -> tuple[float, str]:
    for key in (f"{backend}:{flavor}", flavor):
        if key in rs.prices:
            return float(rs.prices[key]), "carl.yaml"
    table = DEFAULT_PRICES.get(backend, {})
    if flavor in table:
        return table[flavor], "default"
    raise ConfigError(f"no price for {backend}:{flavor}, so the job's cost cannot be estimated",
                      hint=f'Add it to carl.yaml: remote: {{prices: {{"{backend}:{flavor}": USD_PER_HOUR}}}}',
                      context={"backend": backend, "flavor": flavor, "field": "remote.prices",
                               "known": sorted(table)})


def resolve_hours(cfg: Config, rs: RemoteSettings, hours: float | None) -> float:
    h = hours if hours is not None else (rs.hours if rs.hours is not None else cfg.budget.max_hours)
    if not h or h <= 0:
        raise ConfigError(f"hours must be > 0 (got {h})", context={"field": "remote.hours"})
    return float(h)


def estimate(cfg: Config, rs: RemoteSettings, backend: str, *, hours: float | None = None,
             flavor: str | None = None, gpu_count: int | None = None, budget: float | None = None,
             approved: bool = False, home: CarlHome | None = None) -> Estimate:
    """The cost estimate and the policy's decision for submitting one job (appends nothing)."""
    flavor = flavor or rs.flavor_for(backend)
    if gpu_count is None:
        gpu_count = rs.runpod.gpu_count if backend == "runpod" else 1
    h = resolve_hours(cfg, rs, hours)
    pph, source = price_per_hour(rs, backend, flavor)
    usd = round(pph * gpu_count * h, 4)
    action = {"kind": "remote.submit", "backend": backend, "flavor": flavor, "estimated_usd": usd,
              "approved": bool(approved)}
    dec = ledger.evaluate(action, cfg, home=home)
    from engine.ledger.policy import resolve

    _, per_job, per_day = resolve(cfg)
    spent = float(dec.context.get("spent_today_usd", 0.0))
    remaining_today = max(0.0, round(per_day - spent, 4))
    remaining = min(per_job, remaining_today) if budget is None else min(per_job, remaining_today, budget)
    decision, rule, reason = dec.decision, dec.rule, dec.reason
    if budget is not None and usd > budget and decision != "deny":
        decision, rule, reason = "deny", "--budget", f"estimated ${usd:.2f} exceeds --budget ${budget:.2f}"
    return Estimate(backend=backend, flavor=flavor, gpu_count=gpu_count, hours=h, price_per_hour=pph,
                    price_source=source, estimated_usd=usd, max_usd_per_job=per_job, max_usd_per_day=per_day,
                    spent_today_usd=spent, remaining_today_usd=remaining_today, remaining_usd=round(remaining, 4),
                    budget_usd=budget, within_budget=usd <= remaining, decision=decision, rule=rule, reason=reason)


def enforce(est: Estimate, *, approved: bool) -> None:
    """Raise the refusal the estimate's decision calls for (exit 5), or return when the submit may go ahead."""
    ctx = {"estimate": est.to_dict()}
    if est.decision == "deny":
        if est.rule.startswith("budget") or est.rule == "--budget":
            raise BudgetError(f"refused: {est.reason}", context=ctx,
                              hint="Lower remote.hours or pick a cheaper flavor, or raise the cap in carl.yaml's "
                                   "budget: section.")
        raise PermissionDenied(f"refused by the policy ({est.rule}): {est.reason}", context=ctx,
                               hint="Change carl.yaml's policy: section if this backend/flavor should be allowed.")
    if est.decision == "needs_approval" or (not approved and est.estimated_usd > 0):
        raise ApprovalRequired(
            f"{est.backend} {est.flavor} for up to {est.hours:g} h is estimated at ${est.estimated_usd:.2f} "
            f"(remaining budget ${est.remaining_usd:.2f}); approval required", context=ctx,
            hint="Re-run with --approve if you accept the cost (or approve it in the workbench).")


def record_approval(est: Estimate, *, job_id: str, via: str, home: CarlHome | None = None) -> dict[str, Any]:
    """Append the ``approval`` ledger block for ``job_id`` (carl's run id for the job)."""
    return ledger.record("approval", {"job_id": job_id, "kind": "remote.submit", "backend": est.backend,
                                      "flavor": est.flavor, "gpu_count": est.gpu_count, "hours": est.hours,
                                      "estimated_usd": est.estimated_usd, "price_per_hour": est.price_per_hour,
                                      "remaining_usd": est.remaining_usd, "via": via}, home=home)

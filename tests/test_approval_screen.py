"""The approval modal: snapshots at 80×24 and 120×40 over a tiny host app, and its decision by keys only."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Static

from screens.approval import ApprovalScreen

ESTIMATE = {"backend": "hf", "flavor": "a10g-large", "gpu_count": 1, "hours": 2.0, "price_per_hour": 1.5,
            "price_source": "default", "estimated_usd": 3.0, "max_usd_per_job": 10.0, "max_usd_per_day": 25.0,
            "spent_today_usd": 4.5, "remaining_today_usd": 20.5, "remaining_usd": 10.0, "budget_usd": None,
            "within_budget": True, "decision": "needs_approval", "rule": "paid_needs_approval",
            "reason": "paid compute needs an explicit approval", "currency": "USD"}
OVER = {**ESTIMATE, "backend": "runpod", "flavor": "NVIDIA H100 80GB HBM3", "gpu_count": 4, "hours": 8.0,
        "price_per_hour": 2.99, "estimated_usd": 95.68, "within_budget": False, "decision": "deny",
        "rule": "budget.max_usd_per_job", "reason": "estimated $95.68 exceeds the per-job cap $10.00"}


class Host(App):
    """A bare app that pushes the modal on mount and keeps its decision."""

    def __init__(self, estimate: dict):
        super().__init__()
        self.estimate = estimate
        self.decisions: list[bool] = []

    def compose(self) -> ComposeResult:
        yield Static("train screen (host)")

    def on_mount(self) -> None:
        self.push_screen(ApprovalScreen(self.estimate), self.decisions.append)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_snapshot_approval(snap_compare, snap_env, snap_home, size):
    assert snap_compare(Host(ESTIMATE), terminal_size=size)


def test_snapshot_refused_over_budget(snap_compare, snap_env, snap_home):
    assert snap_compare(Host(OVER), terminal_size=(80, 24))


@pytest.mark.anyio
@pytest.mark.parametrize("keys,expected", [(["y"], [True]), (["n"], [False]), (["escape"], [False])])
async def test_keys_decide(keys, expected):
    app = Host(ESTIMATE)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press(*keys)
        await pilot.pause()
        assert app.decisions == expected
        assert not isinstance(app.screen, ApprovalScreen)


@pytest.mark.anyio
async def test_a_refused_estimate_cannot_be_approved():
    app = Host(OVER)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert app.decisions == [] and isinstance(app.screen, ApprovalScreen)
        await pilot.press("n")
        await pilot.pause()
        assert app.decisions == [False]

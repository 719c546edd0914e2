"""The ledger screen: snapshots (chain table, block detail, verify verdict on a tampered chain) at 80×24 and
120×40, and pilot tests of filtering, verify and init."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carl_tui.app import CarlApp
from engine import ledger
from engine.home import CarlHome
from engine.ledger import Ledger
from engine.ledger.canonical import canonical
from screens.context import WorkbenchContext

SIZES = [(80, 24), (120, 40)]
T0 = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
CLOCK = 1_750_100_000.0


def build(home: CarlHome) -> Ledger:
    """A deterministic ledger: fixed key seed, fixed timestamps."""
    led = Ledger(home)
    led.init(seed="snapshot-key", ts=T0)
    acts = [("project.init", {"preset": "tiny-cpu", "path": "carl.yaml"}),
            ("run.start", {"run_id": "run-a1", "config_hash": "3f2a9c", "backend": "local"}),
            ("gate.open", {"run_id": "run-a1", "step": 18, "mode": "metric"}),
            ("checkpoint", {"run_id": "run-a1", "step": 20, "path": "checkpoints/step-20"}),
            ("eval", {"run_id": "run-a1", "pass": True, "metrics": {"task": 0.81, "phi_mean": 0.24}}),
            ("run.complete", {"run_id": "run-a1", "steps": 60}),
            ("approval", {"job_id": "job-7", "estimated_usd": 3.2, "by": "tui"}),
            ("job.submit", {"job_id": "job-7", "backend": "hf", "flavor": "a10g-large", "estimated_usd": 3.2,
                            "run_id": "run-b2"}),
            ("chat.tool_call", {"name": "list_runs", "input": {}, "ok": True}),
            ("push", {"run_id": "run-a1", "repo": "me/adder-lora"})]
    led.append_many([(a, p, T0 + 60 * (i + 1)) for i, (a, p) in enumerate(acts)])
    return led


def tamper(led: Ledger, index: int) -> None:
    seg = led.segments()[0]
    lines = seg.read_bytes().splitlines(keepends=True)
    b = json.loads(lines[index])
    b["payload"]["steps"] = 600  # forged, hashes left alone
    lines[index] = canonical(b) + b"\n"
    seg.write_bytes(b"".join(lines))


def make_app(root: Path) -> CarlApp:
    ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=root, clock=lambda: CLOCK)
    return CarlApp(ctx=ctx, screen="ledger")


async def settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


# ------------------------------------------------------------------------------------------------ snapshots
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ledger_table(snap_compare, snap_home, snap_env, size):
    build(CarlHome.from_env())
    assert snap_compare(make_app(snap_home), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ledger_block_detail(snap_compare, snap_home, snap_env, size):
    build(CarlHome.from_env())

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("up", "up", "up", "up", "up")  # from the last block (10) to the eval block (5)
        await pilot.pause()

    assert snap_compare(make_app(snap_home), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ledger_verify_verdict_on_tampered_chain(snap_compare, snap_home, snap_env, size):
    tamper(build(CarlHome.from_env()), 6)

    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("v")
        await settle(pilot)

    assert snap_compare(make_app(snap_home), terminal_size=size, run_before=run_before)


# ------------------------------------------------------------------------------------------------ behaviour
def _screen(app):
    from screens.ledger import LedgerScreen

    return next(s for s in app.screen_stack if isinstance(s, LedgerScreen))


@pytest.mark.anyio
async def test_filter_by_action_and_run(tmp_path):
    build(CarlHome.from_env())
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        scr = _screen(app)
        assert len(scr.shown) == 11
        await pilot.press("slash", *"run.")
        await pilot.pause()
        assert [b["action"] for b in scr.shown] == ["run.start", "run.complete"]
        await pilot.press(*["backspace"] * 4, *"run-b")
        await pilot.pause()
        assert [b["action"] for b in scr.shown] == ["job.submit"]
        await pilot.press(*["backspace"] * 5, *"run:run-a1 action:eval")
        await pilot.pause()
        assert [b["index"] for b in scr.shown] == [5]
        await pilot.press("escape", "v")  # back on the table, v verifies (not typed into the filter)
        await settle(pilot)
        assert scr.result is not None and scr.result.ok
        assert "intact: 11 blocks" in str(scr.query_one("#ledger-verdict").render())


@pytest.mark.anyio
async def test_verify_selects_first_bad_block_and_shows_why(tmp_path):
    led = build(CarlHome.from_env())
    tamper(led, 6)
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("v")
        await settle(pilot)
        scr = _screen(app)
        assert scr.result.first_bad == 6 and scr.result.kind == "payload_hash_mismatch"
        verdict = str(scr.query_one("#ledger-verdict").render())
        assert "BROKEN at block 6" in verdict and "payload hash mismatch" in verdict
        table = scr.query_one("#ledger-table")
        assert scr.shown[table.cursor_row]["index"] == 6
        assert "first bad block" in str(scr.query_one("#ledger-detail-body").render())


@pytest.mark.anyio
async def test_empty_ledger_init_and_missing_public_key(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        scr = _screen(app)
        assert scr.blocks == [] and "No blocks yet" in str(scr.query_one("#ledger-verdict").render())
        await pilot.press("i")
        await settle(pilot)
        assert [b["action"] for b in scr.blocks] == ["ledger.genesis"]
        ledger.record("run.start", {"run_id": "x"})
        (CarlHome.from_env().keys / "ledger.pub").unlink()
        await pilot.press("v")
        await settle(pilot)
        verdict = str(scr.query_one("#ledger-verdict").render())
        assert "cannot verify" in verdict and "public key" in verdict

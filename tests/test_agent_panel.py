"""The train screen's agent panel: a recorded agent run (frames with agent/* numbers written here) shows task
completion, tool format and tool calls/task (latest and first) and the latest mean Phi per assistant turn;
snapshots at 80×24 and 120×40. A run without agent numbers keeps the panel hidden."""

from __future__ import annotations

import json

import pytest

from screens.widgets.agent import AgentPanel, render, summary
from tests.test_train_screen import SIZES, make_app, make_run, settle

AGENT_PLAN = {"config": "carl.yaml", "preset": None, "model": "builtin:agent-sql", "dataset": "builtin:sql-tasks",
              "device": "cpu", "gpus": 1, "cascade": {"mode": "evidence"},
              "grpo": {"max_steps": 40, "per_device_train_batch_size": 16, "num_generations": 4,
                       "learning_rate": 0.0005}}


def agent_extra(step: int) -> dict[str, float]:
    return {"agent/task_completion": round(0.25 + 0.01 * step, 4), "agent/tool_format": round(0.8 + 0.004 * step, 4),
            "agent/tool_calls_per_task": round(1.25 - 0.005 * step, 4), "agent/generated_fraction": 0.6,
            "agent/phi_turn_1": round(0.9 + 0.001 * step, 4), "agent/phi_turn_2": round(0.95 - 0.001 * step, 4),
            "tools/call_frequency": 1.0}


def make_agent_run(home, run_id: str):
    d = make_run(home, run_id, range(1, 41))
    (d / "plan.json").write_text(json.dumps(AGENT_PLAN))
    lines = []
    for ln in (d / "frames.jsonl").read_text().splitlines():
        f = json.loads(ln)
        f["extra"] = {**(f.get("extra") or {}), **agent_extra(f["step"])}
        lines.append(json.dumps(f))
    (d / "frames.jsonl").write_text("\n".join(lines) + "\n")
    return d


def test_summary_and_text_from_frames():
    frames = [{"step": s, "extra": agent_extra(s)} for s in (1, 2, 3)]
    s = summary(frames)
    assert s["numbers"]["agent/task_completion"] == (0.26, 0.28)
    assert s["numbers"]["agent/tool_calls_per_task"] == (1.245, 1.235)
    assert s["turns"] == [0.903, 0.947] and s["turns_step"] == 3
    text = render(frames)
    assert "task completion [b]0.280[/b] (first 0.260)" in text
    assert "tool format [b]0.812[/b] (first 0.804)" in text
    assert "tool calls/task [b]1.235[/b] (first 1.245)" in text and "Φ per turn 0.903 · 0.947" in text
    assert summary([{"step": 1, "extra": {"carl/phi": 0.5}}]) is None and render([]) == ""


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_agent_run_snapshot(snap_compare, snap_home, snap_env, size):
    make_agent_run(snap_home / "home", "20250101-120000-agnt")
    app = make_app(snap_home, run="20250101-120000-agnt")

    async def run_before(pilot):
        screen = await settle(pilot, 40)
        panel = screen.query_one(AgentPanel)
        for _ in range(400):
            if panel.display:
                break
            await pilot.pause(0.02)
        assert panel.display
        assert "task completion [b]0.650[/b] (first 0.260)" in render(screen.frames)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.anyio
async def test_panel_hidden_for_a_run_without_agent_numbers(tmp_path):
    make_run(tmp_path / "home", "20250101-120000-plain", range(1, 6))
    app = make_app(tmp_path, run="20250101-120000-plain")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot, 5)
        assert screen.query_one(AgentPanel).display is False

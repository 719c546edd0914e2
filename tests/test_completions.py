"""Sampled completions in frames and the observe screen's completions table: a real short cascade GRPO run
of the tiny model (frames carry a bounded sample with reward, task reward, CARL and Φ per completion), the
rows observe builds from them, and the table driven by keys (snapshots at 80×24 and 120×40)."""

from __future__ import annotations

import pytest

from engine.frames import Frame, FrameWriter
from engine.observe.completions import completion_rows
from engine.trainer.samples import COMPLETION_CHARS, SAMPLES_PER_FRAME, finish, score, take
from screens.widgets.completion_table import CompletionTable
from tests._tiny_fixture import fixed_gate_run, shared_runs, tiny_cache  # noqa: F401
from tests.test_observe_screen import SIZES, make_app, settle
from tests.test_observe_view_screen import settle_underline, until


def test_samples_are_bounded_and_scored():
    prompts = [f"p{i}" for i in range(8)]
    completions = ["x" * 500] + [f"c{i}" for i in range(1, 8)]
    kept = take(prompts, completions, str)
    assert len(kept) == SAMPLES_PER_FRAME and len(kept[0]["completion"]) == COMPLETION_CHARS
    score(kept, carl_part=[0.1 * i for i in range(8)], carl=[0.2] * 8, phi=[0.3] * 7 + [float("nan")])
    out = finish(kept, {"exact": [1.0, 0.0, 1.0, 0.0] + [0.0] * 4, "fmt": [0.5] * 8}, {"exact": 2.0, "fmt": 1.0})
    assert [s["task"] for s in out] == [2.5, 0.5, 2.5, 0.5]
    assert [s["reward"] for s in out] == pytest.approx([2.5, 0.6, 2.7, 0.8])
    assert all(s["phi"] == 0.3 and s["carl"] == 0.2 and "i" not in s for s in out)
    assert finish(None, {}, {}) is None


@pytest.mark.slow
def test_real_run_frames_carry_scored_samples(fixed_gate_run):
    # the shared fixed-gate run (tests/_tiny_fixture.py): stage A at step 1, the gate opens at step 2
    status, d, frames, _, _ = fixed_gate_run
    assert status == "completed" and [f["step"] for f in frames] == [1, 2, 3, 4]
    for f in frames:
        samples = f["samples"]
        assert 1 <= len(samples) <= SAMPLES_PER_FRAME
        for s in samples:
            assert isinstance(s["completion"], str) and len(s["completion"]) <= COMPLETION_CHARS
            assert s["prompt"].endswith("=")  # the addition prompt "37+45="
            assert 0.0 <= s["phi"] <= 1.0 and s["carl"] is not None and s["task"] is not None
            # the reward GRPO trained on: task + the cascade's share of CARL (weight 0 in stage A, then 0.5, 1)
            assert s["reward"] == pytest.approx(s["task"] + f["carl_weight"] * s["carl"], abs=1e-5)
    rows = completion_rows([Frame.from_dict(f) for f in frames])
    assert len(rows) == sum(len(f["samples"]) for f in frames) and rows[0]["per"] == "completion"


def sample_frame(s: int) -> dict:
    return {"step": s, "phi": 0.1 + 0.01 * s, "reward_mean": 0.02 * s, "entropy": 1.5, "timestamp": 1.7e9 + s,
            "samples": [{"prompt": f"{10 + s}+{20 + k}=", "completion": f"{30 + s + k}" + ("<eos>" if k else "9\n9"),
                         "reward": round(1.0 - 0.5 * k + 0.01 * s, 4), "task": 1.0 - 0.5 * k,
                         "carl": 0.3, "phi": round(0.2 + 0.01 * s + 0.02 * k, 4)} for k in range(3)]}


def write_sample_run(home, run_id: str = "20250101-samples", n: int = 12) -> None:
    d = home / "runs" / run_id
    with FrameWriter(d / "frames.jsonl") as w:
        for s in range(1, n + 1):
            w.write(sample_frame(s) if s > 2 else {"step": s, "phi": 0.1, "reward_mean": 0.0,
                                                   "sample": f"1{s}+1{s}=2{2 * s}", "timestamp": 1.7e9 + s})
    (d / "meta.json").write_text('{"status": "completed"}')


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_completions_table_snapshot(snap_compare, snap_home, snap_env, size):
    write_sample_run(snap_home / "home")
    app = make_app(snap_home, run="20250101")

    async def run_before(pilot):
        screen = await settle(pilot, 12, ended=True)
        await pilot.press("5")
        await until(pilot, lambda: screen.query_one(CompletionTable).has_focus)
        await settle_underline(pilot, screen)
        await pilot.pause()
        table = screen.query_one(CompletionTable)
        assert table.has_focus and table.row_total == 2 + 10 * 3  # 2 step-level samples, then 3 per step
        assert table.cursor_row == table.row_total - 1  # follows the newest

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_rows_fall_back_to_the_step_sample():
    rows = completion_rows([Frame(step=3, sample="12+12=24", phi=0.2, reward_mean=0.5), Frame(step=4)])
    assert rows == [{"step": 3, "n": 0, "prompt": "", "completion": "12+12=24", "reward": 0.5, "task": None,
                     "carl": None, "phi": 0.2, "per": "step"}]

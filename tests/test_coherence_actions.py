"""cascade.on_collapse acts (issue 16): a real tiny GRPO run that collapses, and what stop / close_gate do to it.

The collapse is forced by config, not by synthetic frames: the test fixture's barely warm-started tiny model
(10 SFT steps, held-out accuracy 0), ungated CARL at weight 4 and a high learning rate. CARL rewards a sharp
field and the task gives nothing to learn from, so within ~20 steps the policy stops exploring (distinct answers
per group 3.75 → <2, entropy 1.9 → 1.0) — the kind of collapse the ablation's sparse start shows over 100 steps.
The live detector (engine.observe.collapse, fed by the worker) fires; each action is then checked on the run.
"""

from __future__ import annotations

import json

import pytest

from tests._tiny_fixture import run_worker, tiny_cache, tiny_env  # noqa: F401

FORCED = ["grpo.batch_size=16", "grpo.num_generations=4", "grpo.max_completion_length=4",
          "grpo.learning_rate=5e-3", 'cascade.mode="off"', "cascade.warmup_steps=0", "cascade.combine=add",
          "rewards.carl.weight=4", "tracking.trackio=false"]


def _run(sets):
    status, d, frames, events, meta = run_worker(FORCED + sets)
    onsets = [e for e in events if e.get("name") == "collapse_onset"]
    return d, status, frames, onsets, meta


@pytest.mark.slow
def test_on_collapse_stop_ends_the_run_at_the_alarm_with_a_checkpoint(tiny_env):
    d, status, frames, onsets, meta = _run(["grpo.max_steps=40", "grpo.save_steps=1000",
                                            "cascade.on_collapse=stop"])
    assert len(onsets) == 1 and onsets[0]["action"] == "stop"
    alarm = onsets[0]["step"]
    assert alarm < 40
    assert onsets[0]["message"].startswith(f"collapse onset at step {alarm}: distinct/group")
    # the step of the alarm finishes, is checkpointed, and nothing trains after it
    assert status == "stopped"
    assert frames[-1]["step"] == alarm
    assert (d / "checkpoints" / f"checkpoint-{alarm}").is_dir()
    assert not (d / "final").exists()
    assert "diversity" in onsets[0]["evidence"]["signals"] and "task_flat" in onsets[0]["evidence"]["signals"]


@pytest.mark.slow
def test_on_collapse_close_gate_turns_carl_off_for_the_rest_of_the_run(tiny_env):
    from engine.frames import Frame
    from engine.observe.collapse import detect_collapse

    # 24 steps: the alarm comes at step 16 (seed 0), the steps after it show the gate closed
    d, status, frames, onsets, meta = _run(["grpo.max_steps=24", "grpo.save_steps=24",
                                            "cascade.on_collapse=close_gate"])
    assert status == "completed"
    assert len(onsets) == 1 and onsets[0]["action"] == "close_gate"
    alarm = onsets[0]["step"]
    assert alarm < 22  # room to see the steps after it
    # the replay of the run's frames finds the alarm where the live watch raised it
    assert detect_collapse([Frame.from_dict(f) for f in frames]).step == alarm
    before = [f for f in frames if f["step"] <= alarm]
    after = [f for f in frames if f["step"] > alarm]
    assert before and after
    assert all(f["carl_weight"] == 4.0 and f["gate"] == "B" for f in before)  # (warn would keep it so)
    # from the next step on the CARL reward has weight 0: the rewards are the task's alone, stage A
    assert all(f["carl_weight"] == 0.0 and f["gate"] == "A" for f in after)
    # and it is kept with the cascade state in checkpoints (a resumed run keeps CARL off)
    state = json.loads((d / "checkpoints" / "checkpoint-24" / "carl_cascade.json").read_text())
    assert state["closed_at"] == alarm + 1

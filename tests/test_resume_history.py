"""A resumed run keeps its history (issue 25): the live collapse watch replays the frames the run kept before it
trains on, so its alarm is the one ``observe``'s replay of the whole run finds — not one computed from a baseline
that starts at the resume. One real tiny GRPO run (forced to collapse as in tests/test_coherence_actions.py), cut
back to a checkpoint before its alarm, resumed."""

from __future__ import annotations

import json
import shutil

import pytest

from tests._tiny_fixture import tiny_cache, tiny_env  # noqa: F401

pytestmark = pytest.mark.slow

FORCED = ["grpo.batch_size=16", "grpo.num_generations=4", "grpo.max_completion_length=4",
          "grpo.learning_rate=5e-3", 'cascade.mode="off"', "cascade.warmup_steps=0", "cascade.combine=add",
          "rewards.carl.weight=4", "tracking.trackio=false"]


def _onsets(d):
    return [json.loads(x) for x in (d / "events.jsonl").read_text().splitlines()
            if json.loads(x).get("name") == "collapse_onset"]


def test_resume_across_an_alarm_replays_the_kept_frames(tiny_env, capsys):
    from engine.config import load_config
    from engine.frames import read_frames
    from engine.observe.collapse import BASELINE, detect_collapse
    from engine.runs import RunStore, update_meta
    from engine.trainer.plan import plan
    from engine.trainer.worker import Worker

    cfg, path = load_config(None, FORCED + ["grpo.max_steps=40", "grpo.save_steps=2", "grpo.save_total_limit=null",
                                        "cascade.on_collapse=warn"])
    store = RunStore()
    run_id = store.create(cfg.to_yaml(), plan(cfg, path))
    d = store.run_dir(run_id)
    assert Worker(d).run() == "completed"
    first = _onsets(d)
    assert len(first) == 1
    alarm = first[0]["step"]
    assert detect_collapse(read_frames(d / "frames.jsonl")[0]).step == alarm

    # the run as if it had stopped at a checkpoint after the baseline and before the alarm
    keep = max(s for s in range(2, alarm, 2) if s > BASELINE)
    for ck in (d / "checkpoints").glob("checkpoint-*"):
        if int(ck.name.split("-")[1]) > keep:
            shutil.rmtree(ck)
    shutil.rmtree(d / "final")
    update_meta(d, status="stopped")
    assert store.prepare_resume(run_id) == (run_id, keep)
    assert _onsets(d) == [] and [f.step for f in read_frames(d / "frames.jsonl")[0]][-1] == keep
    capsys.readouterr()

    assert Worker(d, resume=True).run() == "completed"
    assert f"collapse watch: replayed {keep} kept frames" in capsys.readouterr().out
    frames = read_frames(d / "frames.jsonl")[0]
    assert [f.step for f in frames] == list(range(1, 41))
    again = _onsets(d)
    # live (across the resume) and replayed (observe, over the whole history) agree, once
    assert len(again) == 1 and again[0]["step"] == detect_collapse(frames).step
    assert again[0]["since"] == detect_collapse(frames).since

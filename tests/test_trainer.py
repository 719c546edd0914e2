"""A real short cascade GRPO run of the tiny model (TRL GRPOTrainer, in process): frames, gate, checkpoints."""

from __future__ import annotations

import json
import os

import pytest

from tests._tiny_fixture import (SMALL, fixed_gate_run, run_worker, shared_runs, tiny_cache,  # noqa: F401
                                 tiny_env)

pytestmark = pytest.mark.slow


def _run(sets):
    return run_worker(SMALL + sets)


def test_short_cascade_run_fixed_gate(fixed_gate_run):
    # trackio is checked in test_train_cli through a real worker process: in-process, trackio fixes its store
    # directory when it is first imported (an earlier test in the session may have done so), not per test.
    # The run (tests/_tiny_fixture.py FIXED_GATE: 4 steps, gate fixed at 2) is shared with test_completions.
    status, d, frames, events, meta = fixed_gate_run
    assert status == "completed"
    assert [f["step"] for f in frames] == [1, 2, 3, 4]
    assert [f["gate"] for f in frames] == ["A", "B", "B", "B"]
    assert [f["carl_weight"] for f in frames] == [0.0, 0.5, 1.0, 1.0]
    for f in frames:
        assert 0.0 <= f["phi"] <= 1.0
        assert set(f["rewards"]) == {"exact", "carl"}
        assert set(f["carl_components"]) == {"coherence", "cloud", "discontinuity"}
        for k in ("loss", "lr", "entropy", "completion_length", "frac_reward_zero_std", "step_time"):
            assert isinstance(f[k], float), k
        hw = f["system"]  # measured in the worker (here: this process), GPUs via NVML or why there are none
        assert hw["pid"] == os.getpid() and hw["rss_mb"] > 0 and 0 < hw["ram_used_mb"] <= hw["ram_total_mb"]
        assert all(g["mem_total_mb"] > 0 for g in hw["gpus"]) if hw["gpus"] else hw["gpu_note"].startswith("no GPU")
    assert frames[0]["system"]["cpu_pct"] is None  # the first sample has no interval to measure over
    assert all(isinstance(f["system"]["cpu_pct"], float) for f in frames[1:])
    # stage A adds nothing; in B the logged carl reward is the weight times the raw CARL reward
    assert frames[0]["rewards"]["carl"] == 0.0
    assert frames[1]["rewards"]["carl"] == pytest.approx(0.5 * frames[1]["carl_reward"], rel=1e-4)
    names = [(e["name"], e.get("step")) for e in events]
    assert ("gate_open", 2) in names and ("checkpoint", 2) in names and ("checkpoint", 4) in names
    assert [e.get("phase") for e in events if e["name"] == "eval"] == ["before", "after"]
    assert json.loads((d / "checkpoints/checkpoint-2/carl_cascade.json").read_text())["gate"]["opened_at"] == 2
    assert (d / "final" / "config.json").is_file()
    assert set(meta["eval"]) == {"before", "after"}
    # run.start says what reproduces the run
    from engine.ledger import Ledger

    start = [b for b in Ledger().iter_blocks() if b["action"] == "run.start"][-1]["payload"]
    import torch
    import trl

    assert start["versions"]["torch"] == torch.__version__ and start["versions"]["trl"] == trl.__version__
    assert start["seed"] == 0 and start["run_id"] == d.name
    assert len(start["dataset_provenance"]["fingerprint"]) == 64 and start["dataset_provenance"]["train_rows"] > 0
    assert start["model_provenance"]["builtin"]["sft_steps"] == 10
    assert start["git"] is None or len(start["git"]["commit"]) == 40


def test_metric_gate_fires_on_the_logged_task_reward(tiny_env):
    # concise rewards are always > 0 and vary with length: the self-calibrating gate must open once it has
    # min_steps values, on exactly the values the frames log as task_reward.
    status, d, frames, events, meta = _run([
        "grpo.max_steps=4", "grpo.save_steps=10", "task.rewards=[{kind: concise, target_length: 2}]",
        "cascade.mode=metric", "cascade.min_steps=2", "cascade.window=2", "cascade.min_above=1",
        "cascade.warmup_steps=0", "tracking.trackio=false"])
    assert status == "completed"
    gate = [e for e in events if e["name"] == "gate_open"]
    assert len(gate) == 1 and gate[0]["step"] == 2 and gate[0]["metric"] == "concise"
    from engine.cascade import percentile

    logged = [f["task_reward"] for f in frames[:2]]
    assert gate[0]["threshold"] == pytest.approx(percentile(logged, 0.6), rel=1e-5)
    assert [f["gate"] for f in frames] == ["A", "B", "B", "B"]
    assert meta["gate_opened_at"] == 2


def _train(sets):
    """What the worker does, in process, keeping the trainer and the RewardState for inspection."""
    from engine.cascade import Cascade
    from engine.config import load_config
    from engine.runs import RunStore
    from engine.trainer import grpo
    from engine.trainer.callbacks import make_callback
    from engine.trainer.data import load_rows
    from engine.trainer.plan import plan

    cfg, path = load_config(None, SMALL + sets)
    store = RunStore()
    d = store.run_dir(store.create(cfg.to_yaml(), plan(cfg, path)))
    model, tok = grpo.load_model_and_tokenizer(cfg, "cpu")
    train_rows, _ = load_rows(cfg)
    events: list[dict] = []
    holder: dict = {}
    cb = make_callback(d, state_ref=lambda: holder.get("state"), should_stop=lambda: False, on_event=events.append)
    trainer, state = grpo.build_trainer(cfg, d, model, tok, train_rows,
                                        Cascade.from_config(cfg, grpo.task_metric_name(cfg)), callbacks=[cb],
                                        on_event=events.append)
    holder["state"] = state
    trainer.train()
    frames = [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()]
    return trainer, state, frames, events


def test_tempered_sampling_uses_the_forward_field(tiny_env):
    # a tempered sampler cannot reuse generation scores: the CARL field comes from one no-grad forward per batch
    trainer, state, frames, _ = _train(["grpo.max_steps=2", "grpo.temperature=0.7", 'cascade.mode="off"',
                                        "cascade.warmup_steps=0", "tracking.trackio=false"])
    assert all(f["gate"] == "B" and f["carl_weight"] == 1.0 for f in frames)
    assert all(0.0 <= f["phi"] <= 1.0 for f in frames)
    assert state.capture is None
    assert (state.forward_hits, state.capture_hits) == (2, 0)


# One untempered run (temperature 1, CARL on from step 1, varied-groups combination, concise task rewards) read by
# the next two tests.
VARIED_UNTEMPERED = ["grpo.max_steps=2", "grpo.save_steps=10", "grpo.temperature=1.0",
                     "task.rewards=[{kind: concise, target_length: 2}]", 'cascade.mode="off"',
                     "cascade.warmup_steps=0", "cascade.combine=varied_groups", "tracking.trackio=false"]


def _varied_untempered(shared_runs):
    return shared_runs("varied-untempered", lambda: _train(VARIED_UNTEMPERED))[1]


def test_untempered_sampling_reuses_the_generation_scores(shared_runs):
    # the converse: at temperature 1 every batch's field comes from the capture on TRL's own `generate` call; a
    # TRL change that bypasses the patched generate shows up here (forward_hits > 0) instead of as 1.2x step time
    trainer, state, frames, _ = _varied_untempered(shared_runs)
    assert all(0.0 <= f["phi"] <= 1.0 for f in frames)
    assert state.capture is not None
    assert (state.capture_hits, state.forward_hits) == (2, 0)


def test_evidence_gate_and_varied_groups_in_a_real_run(tiny_env):
    # concise rewards are in (0, 1] and vary with length within a group: the evidence gate (window 2, one step
    # above a 0.05 floor) opens at step 2, and from then the varied-groups combination logs its tied fraction
    status, d, frames, events, meta = _run([
        "grpo.max_steps=3", "grpo.save_steps=10", "task.rewards=[{kind: concise, target_length: 2}]",
        "cascade.mode=evidence", "cascade.evidence_window=2", "cascade.evidence_consecutive=1",
        "cascade.evidence_floor=0.05", "cascade.warmup_steps=0", "cascade.combine=varied_groups",
        "tracking.trackio=false"])
    assert status == "completed"
    gate = [e for e in events if e["name"] == "gate_open"]
    assert len(gate) == 1 and gate[0]["step"] == 2 and gate[0]["mode"] == "evidence"
    assert gate[0]["lower_bound"] > 0.05 and gate[0]["trials"] == 16
    assert [f["gate"] for f in frames] == ["A", "B", "B"]
    assert all(0.0 <= f["extra"]["carl/tied_groups"] <= 1.0 for f in frames[1:])
    assert all(1.0 <= f["extra"]["completions/distinct_per_group"] <= 4.0 for f in frames)


def test_varied_groups_adds_carl_where_task_rewards_vary_and_the_metric_says_so(shared_runs):
    # TRL keeps the last batch's per-completion rewards: in stage B, a group whose task rewards vary got a CARL
    # term (> 0, CARL is in (0, 1)), a tied group got exactly 0, and carl/tied_groups is the fraction that got 0
    trainer, state, frames, _ = _varied_untempered(shared_runs)
    logs = trainer._logs["rewards"]
    task, carl = list(logs["concise"]), list(logs["carl"])
    g = 4
    assert len(task) == len(carl) == 8
    tied = 0
    for i in range(0, 8, g):
        if len(set(task[i: i + g])) == 1:
            tied += 1
            assert carl[i: i + g] == [0.0] * g
        else:
            assert all(x > 0 for x in carl[i: i + g])
    assert frames[-1]["extra"]["carl/tied_groups"] == pytest.approx(tied / 2)
    assert frames[-1]["rewards"]["carl"] == pytest.approx(sum(carl) / 8, rel=1e-5)

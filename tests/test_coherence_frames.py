"""Phi in every frame (issue 16): a real short GRPO run with CARL off still logs phi = 1 - entropy / log V."""

from __future__ import annotations

import json
import math

import pytest

from tests._tiny_fixture import SMALL, tiny_cache, tiny_env  # noqa: F401


def _run(sets):
    from engine.config import load_config
    from engine.runs import RunStore
    from engine.trainer.plan import plan
    from engine.trainer.worker import Worker

    cfg, path = load_config(None, SMALL + ["tracking.trackio=false"] + sets)
    store = RunStore()
    run_id = store.create(cfg.to_yaml(), plan(cfg, path))
    d = store.run_dir(run_id)
    assert Worker(d).run() == "completed"
    return d, [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_frames_carry_phi_with_carl_off(tiny_env):
    d, frames = _run(["grpo.max_steps=3", "rewards.carl.enabled=false"])
    vocab = json.loads((d / "final" / "config.json").read_text())["vocab_size"]
    assert [f["step"] for f in frames] == [1, 2, 3]
    for f in frames:
        assert "carl_reward" not in f and "carl" not in f["rewards"]
        assert f["phi"] == pytest.approx(1 - f["entropy"] / math.log(vocab), abs=1e-9)
    # observe reports phi statistics and a phase for it
    from engine.frames import Frame
    from engine.observe.analysis import summarize

    s = summarize([Frame.from_dict(f) for f in frames], source="x", run="x")
    assert s["phi"] is not None and s["phase"] == "guessing"


def test_phi_from_mean_entropy_and_vocab():
    from engine.coherence import phi_from_mean_entropy

    assert phi_from_mean_entropy(0.0, 16) == 1.0
    assert phi_from_mean_entropy(math.log(16), 16) == pytest.approx(0.0)
    assert phi_from_mean_entropy(math.log(16) / 4, 16) == pytest.approx(0.75)
    assert phi_from_mean_entropy(None, 16) is None and phi_from_mean_entropy(1.0, None) is None
    assert phi_from_mean_entropy(float("nan"), 16) is None and phi_from_mean_entropy(1.0, 1) is None


def test_trl_trainer_state_gets_phi_when_the_vocab_is_known(tmp_path):
    """A TRL output dir observed from outside: the real committed trainer_state.json plus a config.json."""
    import shutil
    from pathlib import Path

    from engine.observe.sources import TrainerStateSource

    src = Path(__file__).parent / "data" / "trl_grpo" / "trainer_state.json"
    ck = tmp_path / "out" / "checkpoint-4"
    ck.mkdir(parents=True)
    shutil.copy(src, ck / "trainer_state.json")
    frames, _ = TrainerStateSource(tmp_path / "out").load()
    assert frames and all(f.phi is None for f in frames)  # vocabulary unknown: no phi is invented
    (ck / "config.json").write_text(json.dumps({"vocab_size": 1000}))
    frames, _ = TrainerStateSource(tmp_path / "out").load()
    with_entropy = [f for f in frames if f.entropy is not None]
    assert with_entropy
    for f in with_entropy:
        assert f.phi == pytest.approx(1 - f.entropy / math.log(1000))

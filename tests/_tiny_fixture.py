"""Shared by the trainer tests: one short-warm-start tiny model per test session, built once, and the short runs
several test files read (``shared_runs``), each trained once per session in its own CARL_HOME."""

from __future__ import annotations

import pytest

SFT_STEPS = "10"


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    from engine.trainer.tiny import ensure_tiny

    root = tmp_path_factory.getbasetemp() / "carl-tiny-cache"
    ensure_tiny(root, sft_steps=int(SFT_STEPS))
    return root


@pytest.fixture
def tiny_env(tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CARL_TINY_CACHE", str(tiny_cache))
    monkeypatch.setenv("CARL_TINY_SFT_STEPS", SFT_STEPS)
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("CARL_LEDGER_PASSPHRASE", "test")
    return tiny_cache


_SHARED: dict = {}


@pytest.fixture(scope="session")
def shared_runs(tiny_cache, tmp_path_factory):
    """``get(key, make)``: ``(carl_home, make())``, made once per session under the tiny environment in a
    CARL_HOME of its own (a test that reads the run's ledger points CARL_HOME there), then reused by every test
    that asks for the same key. ``make`` runs in this process, so what it keeps (frames, a trainer) stays.
    The cache is this module's (each test module that imports the fixture gets a fixture of its own)."""
    made = _SHARED

    def get(key: str, make):
        if key not in made:
            root = tmp_path_factory.mktemp(f"shared-{key}")
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("CARL_HOME", str(root / "carl-home"))
                mp.setenv("CARL_TINY_CACHE", str(tiny_cache))
                mp.setenv("CARL_TINY_SFT_STEPS", SFT_STEPS)
                mp.setenv("TRACKIO_DIR", str(root / "trackio"))
                mp.setenv("CARL_LEDGER_PASSPHRASE", "test")
                made[key] = (root / "carl-home", make())
        return made[key]

    return get


SMALL = ["grpo.batch_size=8", "grpo.num_generations=4", "grpo.max_completion_length=5", "grpo.learning_rate=1e-3"]


def run_worker(sets: list[str]):
    """One run of the demo config with ``sets`` through the worker in this process:
    (status, run_dir, frames, events, meta)."""
    import json

    from engine.config import load_config
    from engine.runs import RunStore, read_json
    from engine.trainer.plan import plan
    from engine.trainer.worker import Worker

    cfg, path = load_config(None, sets)
    store = RunStore()
    run_id = store.create(cfg.to_yaml(), plan(cfg, path))
    d = store.run_dir(run_id)
    status = Worker(d).run()
    frames = [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()]
    events = [json.loads(x) for x in (d / "events.jsonl").read_text().splitlines()]
    return status, d, frames, events, read_json(d / "meta.json")


# The fixed-gate cascade run (4 steps, the gate opens at step 2): test_trainer checks its frames, events, checkpoints
# and ledger, test_completions the scored samples in its frames.
FIXED_GATE = ["grpo.max_steps=4", "grpo.save_steps=2", "cascade.mode=fixed", "cascade.fixed_step=2",
              "cascade.warmup_steps=2", "cascade.combine=add", "tracking.trackio=false"]


@pytest.fixture
def fixed_gate_run(shared_runs, monkeypatch):
    """(status, run_dir, frames, events, meta) of the shared fixed-gate run; CARL_HOME points at its home."""
    home, res = shared_runs("fixed-gate", lambda: run_worker(SMALL + FIXED_GATE))
    monkeypatch.setenv("CARL_HOME", str(home))
    return res

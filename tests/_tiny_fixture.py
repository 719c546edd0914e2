"""Shared by the trainer tests: one short-warm-start tiny model per test session, built once."""

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

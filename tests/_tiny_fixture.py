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

"""Telemetry during a real (tiny, CPU) training run: with consent on and a platform that fails every telemetry
request, training completes exactly as it would without telemetry; the platform saw the attempts. With
ledger_forward consent the run's blocks reach the platform at the end of the run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from engine.home import CarlHome
from engine.ledger import Ledger
from engine.platform import consent
from tests._tiny_fixture import SMALL, tiny_cache, tiny_env  # noqa: F401


def test_telemetry_failure_while_training_leaves_training_unaffected(tiny_env, managed):
    managed.fault("POST", r"/api/platform/telemetry", status=500, times=10_000)
    consent.set_flags({"telemetry": True, "ledger_forward": True})
    sets = [a for s in SMALL + ["grpo.max_steps=3", "grpo.save_steps=3", f"remote.managed.url={managed.url}/api"]
            for a in ("--set", s)]
    p = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", "train", *sets], capture_output=True, text=True,
                       timeout=600, env={**os.environ})
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert [x["step"] for x in lines if x["type"] == "frame"] == [1, 2, 3]
    done = lines[-1]
    assert done["type"] == "done" and done["status"] == "completed"
    posts = managed.calls("POST", "/api/platform/telemetry")
    signals = [r.body["signal"] for r in posts]
    assert signals[0] == "run.start" and signals[-1] == "run.complete" and "eval" in signals
    assert all(r.headers.get("idempotency-key") for r in posts) and managed.telemetry == []  # all refused
    assert all(r.headers["authorization"] == f"Bearer {managed.token}" for r in posts)
    log = "".join(f.read_text(errors="replace") for f in Path(done["run_dir"]).glob("*.log"))
    m = re.search(r"telemetry to \S+: 0 sent, (\d+) failed", log)  # the worker said so in its log, and went on
    assert m and 1 <= int(m.group(1)) <= len(posts)
    # the ledger blocks of the run were forwarded after it ended: the platform's chain is the local chain's prefix
    local = [b["hash"] for b in Ledger(CarlHome.from_env()).iter_blocks()]
    held = [b["hash"] for b in managed.chain]
    assert held and held == local[:len(held)]
    assert any(b["action"] == "run.complete" and b["payload"]["run_id"] == done["run_id"] for b in managed.chain)
    assert "ledger forward to" in log

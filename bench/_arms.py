"""Shared by the trainer benches: run one in-process GRPO arm of the demo and collect its frames."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def run_arm(sets: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    from engine.config import load_config
    from engine.runs import RunStore, read_json
    from engine.trainer.plan import plan
    from engine.trainer.worker import Worker

    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        cfg, path = load_config(None, ["tracking.trackio=false"] + sets, cwd=Path(tempfile.gettempdir()))
        store = RunStore()
        run_id = store.create(cfg.to_yaml(), plan(cfg, path))
        d = store.run_dir(run_id)
        status = Worker(d).run()
        frames = [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()]
        events = [json.loads(x) for x in (d / "events.jsonl").read_text().splitlines()] \
            if (d / "events.jsonl").exists() else []
        return {"status": status, "frames": frames, "events": events, "meta": read_json(d / "meta.json")}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def setup_home() -> None:
    """Benches run in a throwaway CARL_HOME (the tiny model cache is kept in CARL_TINY_CACHE if set)."""
    if "CARL_TINY_CACHE" not in os.environ:
        os.environ["CARL_TINY_CACHE"] = str(Path.home() / ".carl" / "cache")
    os.environ["CARL_HOME"] = tempfile.mkdtemp(prefix="carl-bench-")
    os.environ.setdefault("CARL_LEDGER_PASSPHRASE", "bench")

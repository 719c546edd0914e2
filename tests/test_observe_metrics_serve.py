"""`carl --batch metrics serve` as a separate process, scraped over HTTP on 127.0.0.1 and parsed with Prometheus'
own text parser: a named source (a trainer_state.json with bare Infinity) and a live carl run in CARL_HOME."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from engine.frames import FrameWriter
from tests._signals import default_sigint
from tests.conftest import REPO

NAN_STATE = next((Path(__file__).parent / "data" / "trl_grpo_nan").glob("checkpoint-*/trainer_state.json"))


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_serve_scraped(tmp_path):
    home = Path(os.environ["CARL_HOME"])
    run_dir = home / "runs" / "20260101-live"
    with FrameWriter(run_dir / "frames.jsonl") as w:
        for s in range(12):
            w.write({"step": s, "phi": 0.1, "reward_mean": 0.1 * s, "loss": 1.0, "kl": 0.01})
    (run_dir / "meta.json").write_text(json.dumps({"run_id": "20260101-live", "status": "running"}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "carl_tui", "--batch", "metrics", "serve", "--port", "0",
                             str(NAN_STATE)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)  # CI runs in the background: SIGINT ignored
    try:
        head = json.loads(proc.stdout.readline())
        assert head["url"].startswith("http://127.0.0.1:") and head["sources"][0]["reader"] == "trainer_state"
        m = scrape(head["url"])
        src = str(NAN_STATE)
        lab = lambda **kw: tuple(sorted({"run": "checkpoint-6", "source": src, **kw}.items()))  # noqa: E731
        assert m[("carl_run_last_step", lab())] == 6.0
        assert m[("carl_run_health", lab())] == 2.0
        assert m[("carl_run_finding", lab(code="nonfinite_reward", severity="bad"))] == 1.0
        assert m[("carl_run_metric", lab(metric="kl"))] > 0
        live = tuple(sorted({"run": "20260101-live", "source": str(run_dir / "frames.jsonl")}.items()))
        assert m[("carl_run_last_step", live)] == 11.0
        # the live run grows: the next scrape sees the new step
        with FrameWriter(run_dir / "frames.jsonl") as w:
            w.write({"step": 12, "phi": 0.1, "reward_mean": 1.2, "loss": 1.0, "kl": 0.01})
        assert scrape(head["url"])[("carl_run_last_step", live)] == 12.0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0


def test_metrics_binds_loopback_only():
    from engine.observe.metrics_serve import serve

    server, _, _ = serve([], port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()

"""Alerts against a real HTTP receiver on 127.0.0.1 (no mocks): one POST per new warn/bad finding, deduplicated,
retried after a 5xx, recorded in the ledger; and `observe --follow --webhook` on a replayed collapsing run (a real
demo run, tests/data/coherence) delivers its collapse alert before the collapse is plain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from carl_tui.batch import main as batch_main
from engine.observe.alerts import AlertSender, alert_payload, resolve_webhook
from tests.conftest import REPO

COHERENCE = Path(__file__).parent / "data" / "coherence" / "frames"


class Receiver:
    """A webhook receiver: records (monotonic time, JSON body); answers the first ``fail_first`` POSTs with 503."""

    def __init__(self, fail_first: int = 0):
        self.got: list[tuple[float, dict]] = []
        self.tries = 0
        self.fail_first = fail_first
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.tries += 1
                if outer.tries <= outer.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.got.append((time.monotonic(), json.loads(body)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/SECRETPATH"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def finding(code, severity="bad", step=10, **kw):
    return {"code": code, "severity": severity, "first_step": step, "last_step": step + 5, "message": f"{code} msg",
            "hint": f"{code} hint", **kw}


def test_one_post_per_new_finding_deduplicated_recovered_reopens(receiver):
    s = AlertSender(receiver.url, run="r1", min_interval=0.0)
    s.offer([finding("kl_blowup", "warn"), finding("zero_std_rewards")])
    s.offer([finding("kl_blowup", "warn"), finding("zero_std_rewards")])  # still open: no new alert
    s.offer([finding("kl_blowup", "warn", recovered_at=20)])  # recovered …
    s.offer([finding("kl_blowup", "warn", step=30)])  # … and open again: a new alert
    s.close()
    bodies = [b for _, b in receiver.got]
    assert [b["code"] for b in bodies] == ["kl_blowup", "zero_std_rewards", "kl_blowup"]
    b = bodies[0]
    assert set(b) >= {"text", "run", "code", "severity", "step", "message", "hint"}
    assert b["run"] == "r1" and b["severity"] == "warn" and "kl_blowup" in b["text"] and b["hint"] in b["text"]
    assert s.stats.sent == 3 and s.stats.failed == 0


def test_retried_after_5xx_and_recorded_in_the_ledger(capsys):
    r = Receiver(fail_first=2)
    try:
        from engine.home import CarlHome

        s = AlertSender(r.url, run="r2", min_interval=0.0, ledger_home=CarlHome.from_env())
        s.offer([finding("collapse.onset", step=83)])
        s.close()
    finally:
        r.close()
    assert r.tries == 3 and len(r.got) == 1 and s.stats.sent == 1
    assert batch_main(["ledger", "show", "--last", "3"]) == 0
    blocks = json.loads(capsys.readouterr().out)["blocks"]
    sent = [b for b in blocks if b["action"] == "alert.sent"]
    assert len(sent) == 1 and sent[0]["payload"]["code"] == "collapse.onset"
    assert sent[0]["payload"]["step"] == 88  # no "step" in the finding: its last flagged step
    assert sent[0]["payload"]["host"] == "127.0.0.1"
    assert "SECRETPATH" not in json.dumps(blocks)  # the webhook's secret path is never stored


def test_unreachable_receiver_never_blocks_the_caller():
    s = AlertSender("http://127.0.0.1:9/nothing", run="r3", min_interval=0.0, retries=1, timeout=0.5)
    t0 = time.monotonic()
    s.offer([finding("nonfinite_loss")])
    assert time.monotonic() - t0 < 0.2  # offer() only queues
    s.close(timeout=10)
    assert s.stats.failed == 1 and s.stats.sent == 0


def test_payload_and_env_webhook(monkeypatch):
    p = alert_payload({**finding("collapse.onset", step=5), "step": 7}, "run-x")
    assert p["step"] == 7 and p["text"].startswith("carl BAD collapse.onset in run run-x at step 7")
    monkeypatch.setenv("MY_HOOK", "http://127.0.0.1:1/x")
    assert resolve_webhook("env:MY_HOOK") == "http://127.0.0.1:1/x"
    assert resolve_webhook("env:NOPE_NOT_SET") is None and resolve_webhook(None) is None


def test_webhook_needs_follow(capsys, tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"step": 1, "loss": 1.0}\n')
    assert batch_main(["observe", "--file", str(p), "--webhook", "http://127.0.0.1:1/x"]) == 2
    err = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert "--follow" in err["error"]["message"]


def test_follow_webhook_alerts_before_the_plain_collapse(receiver, tmp_path):
    """A real collapsing demo run replayed frame by frame into a file that `observe --follow --webhook` watches
    (a separate process): the collapse alert arrives once, and before the frame where the collapse is plain has
    even been written."""
    from engine.frames import Frame
    from engine.observe.collapse import plain_collapse_step

    lines = (COHERENCE / "sparse-ungated-1.jsonl").read_text().splitlines()
    plain = plain_collapse_step([Frame.from_dict(json.loads(x)) for x in lines])
    assert plain is not None
    path = tmp_path / "frames.jsonl"
    path.write_text("\n".join(lines[:20]) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "carl_tui", "--batch", "observe", "--file", str(path), "--follow",
                             "--webhook", receiver.url, "--alert-interval", "0", "--poll", "0.05",
                             "--idle-timeout", "3"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        # wait until it follows (it says so on stderr), then write one frame every 30 ms
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "following" not in (proc.stderr.readline() or ""):
            pass
        written: list[tuple[float, int]] = []
        with open(path, "a") as fh:
            for x in lines[20:]:
                fh.write(x + "\n")
                fh.flush()
                written.append((time.monotonic(), json.loads(x)["step"]))
                time.sleep(0.03)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    collapse = [(t, b) for t, b in receiver.got if b["code"] == "collapse.onset"]
    assert len(collapse) == 1
    t_alert, body = collapse[0]
    assert body["step"] < plain and body["severity"] == "bad"
    last_written = max((s for t, s in written if t <= t_alert), default=20)
    assert last_written < plain  # the alert was in before the plain-collapse frame was written


def test_tracker_for_the_workbench_bell():
    from engine.observe.alerts import AlertTracker

    t = AlertTracker()
    assert [p["code"] for p in t.new([finding("kl_blowup", "warn"), finding("stalled_phi", "info")], "r")] == [
        "kl_blowup"]
    assert t.new([finding("kl_blowup", "warn")], "r") == []
    assert t.new([finding("kl_blowup", "warn", recovered_at=9)], "r") == []
    assert [p["code"] for p in t.new([finding("kl_blowup", "warn")], "r")] == ["kl_blowup"]

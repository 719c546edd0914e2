"""`carl --batch jobs …` end to end against loopback backends: approval required (exit 5 with the estimate),
--approve inside the budget submits, status/logs/stop/list work, caps refuse (exit 5, carl.budget), missing
credentials exit 3, network failure exits 4, every approval/submit/stop is a ledger block, and no token is
ever written under CARL_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from carl_tui.batch import main as batch_main
from engine.home import CarlHome
from engine.ledger import Ledger
from engine.remote import list_jobs
from tests.conftest import REPO

FAST_RETRIES = {"max_attempts": 2, "base_delay_s": 0.001, "max_delay_s": 0.002, "timeout_s": 2.0}


def write_config(d: Path, remote: dict, budget: dict | None = None) -> Path:
    data = {"project": {"name": "remote-demo"}, "remote": {"retries": FAST_RETRIES, "poll_interval_s": 0.01,
                                                           "setup": "", **remote}}
    if budget:
        data["budget"] = budget
    p = d / "carl.yaml"
    p.write_text(yaml.safe_dump(data), encoding="utf-8")
    return p


def carl(capsys, *argv: str) -> tuple[int, list[dict], dict | None]:
    """Run `carl --batch …` in-process: (exit code, stdout JSON lines, the stderr error object or None)."""
    capsys.readouterr()
    code = batch_main(list(argv))
    out, err = capsys.readouterr()
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    errs = [json.loads(x) for x in err.splitlines() if x.strip().startswith("{")]
    return code, lines, (errs[-1]["error"] if errs else None)


def ledger_blocks(action: str | None = None) -> list[dict]:
    blocks = list(Ledger(CarlHome.from_env()).iter_blocks())
    return [b for b in blocks if action is None or b["action"] == action]


def assert_no_secret_under(home: Path, *secrets: str) -> None:
    for p in home.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for s in secrets:
                assert s.encode() not in data, f"{s[:6]}… found in {p}"








# ------------------------------------------------------------------------------------------- HF: the whole story
def test_hf_submit_needs_approval_then_submits_status_logs_stop(hub, tmp_path, capsys, _isolated_home):
    cfg = write_config(tmp_path, {"hf": {"flavor": "a10g-large"}, "hours": 2})

    code, out, err = carl(capsys, "jobs", "submit", "--backend", "hf", "--config", str(cfg))
    assert code == 5 and err["code"] == "carl.approval.required"
    est = err["context"]["estimate"]
    assert est["estimated_usd"] == 3.0 and est["price_per_hour"] == 1.5 and est["hours"] == 2
    assert est["remaining_usd"] == 10.0 and out == []
    assert hub.jobs == {} and ledger_blocks("approval") == []

    code, out, err = carl(capsys, "jobs", "submit", "--backend", "hf", "--config", str(cfg), "--approve")
    assert code == 0, err
    job = out[0]
    assert job["backend"] == "hf" and job["remote_id"] in hub.jobs and job["status"] == "queued"
    assert job["estimated_usd"] == 3.0 and job["deduplicated"] is False
    spec = hub.calls("POST", "/api/jobs/alice")[0].body
    script = spec["command"][-1]
    assert script.endswith('exec carl --batch train --config "${TMPDIR:-/tmp}/carl-job.yaml"')
    wheel = hub.repos["alice/carl-wheels"]  # carl's own wheel, shipped through a private repo of the user's
    assert wheel.private and len(wheel.files) == 1
    (path,) = wheel.files
    assert path.startswith("wheels/") and path.endswith("-py3-none-any.whl") and path in script
    assert f"alice/carl-wheels {path} {wheel.sha}" in script  # pinned to the commit that holds it
    assert yaml.safe_load(spec["environment"]["CARL_CONFIG_YAML"])["project"]["name"] == "remote-demo"
    assert spec["environment"]["CARL_RUN_ID"] == job["run_id"] and spec["timeoutSeconds"] == 7200

    rid = job["run_id"]
    hub.set_stage(job["remote_id"], "RUNNING")
    code, out, _ = carl(capsys, "jobs", "status", rid, "--config", str(cfg))
    assert code == 0 and out[0]["status"] == "running" and out[0]["cost_so_far"] > 0

    hub.logs[job["remote_id"]] += ["loading model", json.dumps({"type": "frame", "step": 7, "phi": 0.3})]
    code, out, _ = carl(capsys, "jobs", "logs", rid[:12], "--config", str(cfg))
    assert code == 0 and out[0]["n_lines"] == 2 and out[0]["last_step"] == 7

    hub.set_stage(job["remote_id"], "COMPLETED")
    code, out, _ = carl(capsys, "jobs", "logs", rid, "--follow", "--config", str(cfg))
    assert code == 0
    assert out[0] == {"type": "log", "run_id": rid, "line": "loading model"}
    assert out[1]["type"] == "frame" and out[1]["step"] == 7 and out[1]["run_id"] == rid
    from engine.frames import read_frames
    from engine.runs import RunStore

    frames, _ = read_frames(_isolated_home / "runs" / rid / "frames.jsonl")  # the job's local run, fed live
    assert [f.step for f in frames] == [7] and frames[0].phi == 0.3
    assert RunStore().meta(rid)["backend"] == "hf"
    assert out[-1]["type"] == "done" and out[-1]["status"] == "completed"

    code, out, _ = carl(capsys, "jobs", "list")
    row = next(r for r in out[0]["jobs"] if r["run_id"] == rid)
    assert row["status"] == "completed" and row["last_step"] == 7 and row["backend"] == "hf"
    assert [r["run_id"] for r in list_jobs(CarlHome.from_env())] == [rid]

    approvals, submits = ledger_blocks("approval"), ledger_blocks("job.submit")
    assert [b["payload"]["job_id"] for b in approvals] == [rid]
    assert approvals[0]["payload"]["estimated_usd"] == 3.0 and approvals[0]["payload"]["via"] == "batch --approve"
    assert submits[0]["payload"]["job_id"] == rid and submits[0]["payload"]["remote_id"] == job["remote_id"]
    assert_no_secret_under(_isolated_home, hub.token)


def test_hf_stop_is_a_ledger_block(hub, tmp_path, capsys, _isolated_home):
    cfg = write_config(tmp_path, {"hf": {"flavor": "t4-small"}})
    code, out, _ = carl(capsys, "jobs", "submit", "--config", str(cfg), "--approve")
    assert code == 0
    code, out, _ = carl(capsys, "jobs", "stop", out[0]["run_id"], "--config", str(cfg))
    assert code == 0 and out[0]["status"] == "stopped"
    stops = ledger_blocks("job.stop")
    assert len(stops) == 1 and stops[0]["payload"]["job_id"] == out[0]["run_id"]


def test_above_the_cap_is_refused_even_with_approve(hub, tmp_path, capsys):
    cfg = write_config(tmp_path, {"hf": {"flavor": "a100-large"}, "hours": 8}, budget={"max_usd_per_job": 10})
    code, _, err = carl(capsys, "jobs", "submit", "--config", str(cfg), "--approve")
    assert code == 5 and err["code"] == "carl.budget"
    assert err["context"]["estimate"]["estimated_usd"] == 20.0 and err["context"]["estimate"]["rule"] == \
        "budget.max_usd_per_job"
    code, _, err = carl(capsys, "jobs", "submit", "--config", str(cfg), "--approve", "--hours", "1", "--budget", "2")
    assert code == 5 and err["code"] == "carl.budget" and err["context"]["estimate"]["rule"] == "--budget"
    assert hub.jobs == {} and ledger_blocks("approval") == []


def test_the_daily_cap_counts_todays_submits(hub, tmp_path, capsys):
    cfg = write_config(tmp_path, {"hf": {"flavor": "a10g-large"}, "hours": 4},
                       budget={"max_usd_per_job": 10, "max_usd_per_day": 13})
    assert carl(capsys, "jobs", "submit", "--config", str(cfg), "--approve")[0] == 0
    assert carl(capsys, "jobs", "submit", "--config", str(cfg), "--approve")[0] == 0
    code, _, err = carl(capsys, "jobs", "submit", "--config", str(cfg), "--approve")
    assert code == 5 and err["code"] == "carl.budget"
    assert err["context"]["estimate"]["spent_today_usd"] == 12.0 and len(hub.jobs) == 2


def test_dry_run_prints_the_exact_request_and_sends_nothing(hub, tmp_path, capsys):
    cfg = write_config(tmp_path, {"hf": {"flavor": "l4x1", "namespace": "alice"}})
    code, out, _ = carl(capsys, "jobs", "submit", "--config", str(cfg), "--dry-run")
    assert code == 0 and out[0]["dry_run"] is True
    req = out[0]["request"]
    assert req["url"] == f"{hub.url}/api/jobs/alice" and req["json"]["flavor"] == "l4x1"
    assert req["json"]["secrets"] == {"HF_TOKEN": "***"} and hub.token not in json.dumps(out)
    assert hub.requests == []
    # the exact setup script the container runs: install carl's wheel (built here, not uploaded), then train
    script, ship = out[0]["setup_script"], out[0]["shipment"]
    assert script == req["json"]["command"][-1] and req["json"]["command"][:2] == ["sh", "-c"]
    assert ship["mode"] == "wheel" and ship["wheel_repo"] == "alice/carl-wheels" and ship["uploaded"] is False
    assert f"alice/carl-wheels {ship['wheel_path']} main" in script and "pip install" in script
    assert script.index(ship["wheel_path"]) < script.index("exec carl --batch train")


def test_estimate_verb(hub, tmp_path, capsys):
    cfg = write_config(tmp_path, {"prices": {"hf:a10g-large": 2.0}}, budget={"max_hours": 3})
    code, out, _ = carl(capsys, "jobs", "estimate", "--config", str(cfg))
    assert code == 0 and out[0]["estimated_usd"] == 6.0 and out[0]["price_source"] == "carl.yaml"
    assert out[0]["approval_required"] is True and hub.requests == []


def test_same_idempotency_key_gives_one_job(hub, tmp_path, capsys):
    cfg = write_config(tmp_path, {})
    args = ("jobs", "submit", "--config", str(cfg), "--approve", "--idempotency-key", "nightly-2026-01-01")
    c1, o1, _ = carl(capsys, *args)
    c2, o2, _ = carl(capsys, *args)
    assert c1 == c2 == 0 and o1[0]["run_id"] == o2[0]["run_id"] and o2[0]["deduplicated"] is True
    assert len(hub.jobs) == 1 and len(ledger_blocks("job.submit")) == 1


def test_missing_hf_token_exit_3_names_the_variable(hub, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "none"))
    cfg = write_config(tmp_path, {})
    code, _, err = carl(capsys, "jobs", "submit", "--config", str(cfg), "--approve")
    assert code == 3 and err["code"] == "carl.credential" and "HF_TOKEN" in err["hint"]
    assert hub.requests == [] and ledger_blocks("approval") == []


def test_bad_remote_section_exit_2_with_field_path(tmp_path, capsys):
    cfg = write_config(tmp_path, {"hf": {"flavr": "x"}})
    code, _, err = carl(capsys, "jobs", "estimate", "--config", str(cfg))
    assert code == 2 and err["code"] == "carl.config" and err["context"]["errors"][0]["field"] == "remote.hf.flavr"
    cfg = write_config(tmp_path, {"managed": {"token": "abc"}})
    code, _, err = carl(capsys, "jobs", "estimate", "--backend", "managed", "--config", str(cfg))
    assert code == 2 and "token_env" in err["hint"]


def test_unknown_job_is_run_not_found(capsys):
    code, _, err = carl(capsys, "jobs", "status", "nope")
    assert code == 2 and err["code"] == "carl.run.not_found"


# ------------------------------------------------------------------------------------------- RunPod
def test_runpod_flow(pods, tmp_path, capsys, _isolated_home):
    cfg = write_config(tmp_path, {"runpod": {"base_url": f"{pods.url}/v1", "gpu_type": "NVIDIA H100 80GB HBM3",
                                             "gpu_count": 2}, "hours": 1})
    code, _, err = carl(capsys, "jobs", "submit", "--backend", "runpod", "--config", str(cfg))
    assert code == 5 and err["code"] == "carl.approval.required"
    assert err["context"]["estimate"]["estimated_usd"] == pytest.approx(5.98)
    code, out, err = carl(capsys, "jobs", "submit", "--backend", "runpod", "--config", str(cfg), "--approve")
    assert code == 0, err
    rid, pod = out[0]["run_id"], out[0]["remote_id"]
    assert pods.pods[pod]["gpuCount"] == 2
    pods.pods[pod]["runtime"] = {"uptimeInSeconds": 1}
    code, out, _ = carl(capsys, "jobs", "status", rid, "--config", str(cfg))
    assert out[0]["status"] == "running"
    code, _, err = carl(capsys, "jobs", "logs", rid, "--config", str(cfg))
    assert code == 2 and err["code"] == "carl.remote.unsupported"
    code, out, _ = carl(capsys, "jobs", "stop", rid, "--config", str(cfg))
    assert code == 0 and out[0]["status"] == "stopped" and pods.pods[pod]["desiredStatus"] == "TERMINATED"
    assert {b["action"] for b in ledger_blocks()} >= {"approval", "job.submit", "job.stop"}
    assert_no_secret_under(_isolated_home, pods.token)


# ------------------------------------------------------------------------------------------- managed
def test_managed_flow(managed, tmp_path, capsys, _isolated_home, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "S" * 34)
    cfg = write_config(tmp_path, {"managed": {"url": f"{managed.url}/api", "flavor": "gpu-1x", "send_hf_token": True},
                                  "prices": {"managed:gpu-1x": 1.25}, "hours": 2,
                                  "ship": "none"})  # no Hub here to ship the wheel through
    code, _, err = carl(capsys, "jobs", "submit", "--backend", "managed", "--config", str(cfg))
    assert code == 5 and err["context"]["estimate"]["estimated_usd"] == 2.5
    code, out, err = carl(capsys, "jobs", "submit", "--backend", "managed", "--config", str(cfg), "--approve")
    assert code == 0, err
    rid, remote = out[0]["run_id"], out[0]["remote_id"]
    body = managed.runs[remote]["body"]
    assert body["secrets"] == {"HF_TOKEN": "hf_" + "S" * 34} and body["hours"] == 2
    post = managed.calls("POST", "/api/runs")[0]
    assert post.headers["idempotency-key"] == out[0]["idempotency_key"]
    managed.runs[remote]["status"] = "running"
    managed.logs[remote] += ["a", json.dumps({"type": "frame", "step": 2})]
    managed.finish_after_logs = True
    code, out, _ = carl(capsys, "jobs", "logs", rid, "--follow", "--config", str(cfg))
    assert code == 0 and [o["type"] for o in out] == ["log", "frame", "done"] and out[-1]["status"] == "completed"
    code, out, _ = carl(capsys, "jobs", "list", "--refresh", "--config", str(cfg))
    assert out[0]["jobs"][0]["status"] == "completed" and out[0]["jobs"][0]["last_step"] == 2
    assert_no_secret_under(_isolated_home, managed.token, "hf_" + "S" * 34)


def test_managed_network_failure_exit_4(managed, tmp_path, capsys):
    managed.fault("POST", "/api/runs", status=503, times=5)
    cfg = write_config(tmp_path, {"managed": {"url": f"{managed.url}/api"}, "prices": {"gpu-1x": 1.0}})
    code, _, err = carl(capsys, "jobs", "submit", "--backend", "managed", "--config", str(cfg), "--approve")
    assert code == 4 and err["code"] == "carl.network" and err["context"]["attempts"] == 2
    rows = list_jobs(CarlHome.from_env())
    assert rows[0]["status"] == "failed" and rows[0]["remote_id"] is None


def test_managed_without_a_price_is_a_config_error(managed, tmp_path, capsys):
    cfg = write_config(tmp_path, {"managed": {"url": f"{managed.url}/api", "flavor": "mystery"}})
    code, _, err = carl(capsys, "jobs", "estimate", "--backend", "managed", "--config", str(cfg))
    assert code == 2 and "managed:mystery" in err["hint"]


# ------------------------------------------------------------------------------------------- a real process
def test_subprocess_submit_hf_with_approve(hub, tmp_path):
    cfg = write_config(tmp_path, {"hf": {"flavor": "cpu-basic"}})
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    proc = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", "jobs", "submit", "--backend", "hf",
                           "--config", str(cfg), "--approve"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["remote_id"] in hub.jobs and hub.token not in proc.stdout + proc.stderr

"""engine.remote.sync and engine.remote.mirror against the loopback Hub with the real huggingface_hub client:
a run uploads checkpoints and bookkeeping, the final model only when the policy allows it, an upload failure
never fails the run, `run pull` brings a run home as a normal run, and a followed job's lines land in its local
run exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config import validate_dict
from engine.errors import ConfigError, RunNotFound
from engine.home import CarlHome
from engine.remote import store
from engine.remote.mirror import LocalMirror
from engine.remote.sync import OutputSync, final_policy, pull_run
from engine.runs import RunStore, read_json, update_meta, write_json
from tests.test_jobs_cli import carl


def fake_run(d: Path, steps: int = 3, status: str = "running") -> Path:
    """A run directory shaped like the worker's (no training needed to test the transport)."""
    (d / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (d / "final").mkdir()
    write_json(d / "meta.json", {"run_id": d.name, "status": status, "backend": "local", "pid": 4242})
    (d / "config.yaml").write_text("project: {name: synced}\n", encoding="utf-8")
    (d / "frames.jsonl").write_text("".join(json.dumps({"step": i, "phi": 0.1 * i}) + "\n"
                                            for i in range(1, steps + 1)), encoding="utf-8")
    (d / "events.jsonl").write_text(json.dumps({"name": "checkpoint", "step": 2}) + "\n", encoding="utf-8")
    (d / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}', encoding="utf-8")
    (d / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"\1" * 4096)
    (d / "final" / "config.json").write_text("{}", encoding="utf-8")
    (d / "final" / "model.safetensors").write_bytes(b"\2" * 8192)
    return d


def test_checkpoints_and_bookkeeping_go_up_final_only_when_allowed(hub, tmp_path):
    run = fake_run(tmp_path / "20261201-000000-abcd")
    logs: list[str] = []
    sync = OutputSync(run, "alice/out", run_id="hf-x", log=logs.append, meta=lambda **f: update_meta(run, **f))
    assert sync.checkpoint(2, run / "checkpoints" / "checkpoint-2")
    files = hub.repos["alice/out"].files
    assert hub.repos["alice/out"].private
    assert files["runs/hf-x/checkpoints/checkpoint-2/adapter_model.safetensors"] == b"\1" * 4096
    assert {"runs/hf-x/frames.jsonl", "runs/hf-x/events.jsonl", "runs/hf-x/config.yaml",
            "runs/hf-x/meta.json"} <= set(files)
    assert not any("/final/" in p for p in files)

    sync.finish("completed", final_allowed=False, reason="policy push_requires_eval: …",
                meta_fields={"status": "completed", "last_step": 3})
    up = json.loads(files["runs/hf-x/meta.json"])
    assert up["status"] == "completed" and up["output"]["final_uploaded"] is False
    assert not any("/final/" in p for p in files), "the final model waits for the gate"
    assert read_json(run / "meta.json")["status"] == "running", "the worker writes the terminal status after"

    sync.finish("completed", final_allowed=True, reason="eval gate passed")
    assert files["runs/hf-x/final/model.safetensors"] == b"\2" * 8192
    assert json.loads(files["runs/hf-x/meta.json"])["output"]["final_uploaded"] is True
    assert len(hub.repos["alice/out"].commits) == 3 and sync.errors == 0


def test_the_final_model_follows_the_policy():
    gate_failed = (False, "task metric 0.100 < threshold 0.500")
    ok, why = final_policy(validate_dict({}), gate_failed)
    assert not ok and "push_requires_eval" in why and "0.100" in why
    assert final_policy(validate_dict({}), (True, "task metric 0.9 >= 0.5"))[0]
    assert final_policy(validate_dict({"policy": {"push_requires_eval": False}}), gate_failed)[0]
    assert not final_policy(validate_dict({}), None)[0], "no eval ran: held back (fails closed)"


def test_a_failed_upload_is_logged_and_the_run_goes_on(hub, tmp_path):
    run = fake_run(tmp_path / "r1")
    hub.fault("POST", r"/api/models/alice/out/commit/main", status=403, times=10)
    logs: list[str] = []
    sync = OutputSync(run, "alice/out", run_id="hf-y", log=logs.append)
    assert sync.checkpoint(2, run / "checkpoints" / "checkpoint-2") is None
    assert sync.errors == 1 and "carl.credential" in logs[-1] and hub.token not in logs[-1]


def test_background_uploads_retry_keep_their_checkpoint_and_finish_joins_them(hub, tmp_path):
    # a training run's uploader (issue 25): off the loop, retried on a transient failure, hard-linked files
    import shutil

    run = fake_run(tmp_path / "r-bg")
    hub.fault("POST", r"/api/models/alice/out/commit/main", status=503, times=1)
    events: list[dict] = []
    logs: list[str] = []
    sync = OutputSync(run, "alice/out", run_id="hf-bg", log=logs.append, on_event=events.append, background=True,
                      backoff_s=0.01)
    ck = run / "checkpoints" / "checkpoint-2"
    assert sync.checkpoint(2, ck) is None  # queued: the training loop goes on at once
    shutil.rmtree(ck)  # the trainer rotated the checkpoint away before its upload ran: the hard links keep it
    state = {"stages": [{"name": "push", "status": "done"}]}
    sha = sync.finish("completed", final_allowed=True, reason="ok", meta_fields={"status": "completed"},
                      overrides={"pipeline.json": state})
    repo = hub.repos["alice/out"]
    assert sha == repo.commits[-1] and len(repo.commits) == 2  # the checkpoint, then the last upload
    assert repo.files["runs/hf-bg/checkpoints/checkpoint-2/adapter_model.safetensors"] == b"\1" * 4096
    assert json.loads(repo.files["runs/hf-bg/pipeline.json"]) == state  # what the run ended with, not "running"
    assert json.loads(repo.files["runs/hf-bg/meta.json"])["status"] == "completed"
    assert any("retrying in 0.01s (attempt 1 of 3)" in m for m in logs)
    assert sync.errors == 0 and events == [] and not (run / ".upload").exists()


def test_pull_brings_a_remote_run_home_as_a_normal_run(hub, tmp_path, capsys):
    run = fake_run(tmp_path / "in-container", status="running")
    home = CarlHome.from_env()
    store.save({"run_id": "hf-20261201-000000-aaaaaa", "backend": "hf", "remote_id": "j1", "status": "running",
                "output_repo": "alice/out", "submitted_ts": 1.0}, home)
    sync = OutputSync(run, "alice/out", run_id="hf-20261201-000000-aaaaaa", log=lambda m: None)
    sync.checkpoint(2, run / "checkpoints" / "checkpoint-2")

    code, out, err = carl(capsys, "run", "pull", "hf-2026")
    assert code == 0, err
    res = out[0]
    d = home.runs / "hf-20261201-000000-aaaaaa"
    assert res["run_id"] == d.name and res["status"] == "running" and res["last_step"] == 3
    assert res["last_checkpoint"] == 2 and not res["has_final"] and res["revision"] == hub.repos["alice/out"].sha
    meta = read_json(d / "meta.json")
    assert meta["backend"] == "hf" and meta["pid"] is None and meta["remote"]["repo_id"] == "alice/out"
    assert RunStore(home).meta(d.name)["status"] == "running", "a remote run is never read as a dead local worker"

    sync.finish("completed", final_allowed=True, reason="ok", meta_fields={"status": "completed"})
    code, out, _ = carl(capsys, "run", "pull", d.name)
    assert code == 0 and out[0]["has_final"] and out[0]["status"] == "completed"
    assert (d / "final" / "model.safetensors").read_bytes() == b"\2" * 8192
    code, out, _ = carl(capsys, "run", "diff", d.name, d.name)
    assert code == 0 and out[0]["run_a"] == d.name
    assert not (home.root / "cache" / "pull").exists() or not any((home.root / "cache" / "pull").iterdir())


def test_a_job_that_ended_without_saying_so_pulls_as_ended(hub, tmp_path):
    run = fake_run(tmp_path / "c", status="running")
    store.save({"run_id": "hf-dead", "backend": "hf", "remote_id": "j2", "status": "failed",
                "output_repo": "alice/out"})
    OutputSync(run, "alice/out", run_id="hf-dead", log=lambda m: None).checkpoint(2, run / "checkpoints" /
                                                                                  "checkpoint-2")
    assert pull_run("hf-dead")["status"] == "failed"


def test_pull_errors_are_typed(hub, tmp_path):
    with pytest.raises(ConfigError) as ei:
        pull_run("nothing-known")
    assert ei.value.context["field"] == "train.output_repo"
    OutputSync(fake_run(tmp_path / "x"), "alice/out", run_id="other", log=lambda m: None).finish(
        "completed", final_allowed=False, reason="-")
    with pytest.raises(RunNotFound):
        pull_run("not-there", repo_id="alice/out")
    with pytest.raises(RunNotFound):
        pull_run("other", repo_id="alice/no-such-repo")


def test_a_followed_job_lands_in_its_local_run_once(tmp_path):
    home = CarlHome.from_env()
    m = LocalMirror("hf-live", home)
    m.create({"run_id": "hf-live", "backend": "hf", "status": "queued", "remote_id": "j"}, "project: {name: x}\n")
    lines = [{"type": "frame", "run_id": "inside", "step": 1, "phi": 0.2, "elapsed_s": 1.0},
             {"type": "event", "run_id": "inside", "name": "gate_open", "step": 1, "mode": "fixed"},
             {"type": "frame", "run_id": "inside", "step": 2, "phi": 0.3, "elapsed_s": 2.0}]
    assert [m.feed(x) for x in lines] == ["frame", "event", "frame"]
    m2 = LocalMirror("hf-live", home)  # a second follow replays the job's logs from the start
    assert [m2.feed(x) for x in lines] == [None, None, None]
    assert m2.feed({"type": "frame", "step": 3, "phi": 0.4}) == "frame"
    frames = [json.loads(x) for x in (m.dir / "frames.jsonl").read_text().splitlines()]
    assert [f["step"] for f in frames] == [1, 2, 3] and "run_id" not in frames[0] and "type" not in frames[0]
    assert RunStore(home).meta("hf-live")["status"] == "created"
    assert read_json(m.dir / "meta.json")["gate_opened_at"] == 1
    m2.feed({"type": "done", "run_id": "inside", "status": "completed", "eval": {"after": {"task_metric": 1.0}}})
    meta = RunStore(home).meta("hf-live")
    assert meta["status"] == "completed" and meta["eval"]["after"]["task_metric"] == 1.0 and meta["last_step"] == 3


def test_the_run_store_follows_a_remote_run_until_its_job_says_done():
    """What `run attach`, the observe and the train screens use on a run fed by a job's log stream."""
    import threading

    home = CarlHome.from_env()
    m = LocalMirror("hf-follow", home)
    m.create({"run_id": "hf-follow", "backend": "hf", "status": "running", "remote_id": "j"}, "project: {}\n")
    m.feed({"type": "frame", "step": 1, "phi": 0.1})
    seen: list[dict] = []
    go_on = threading.Event()

    def feeder() -> None:
        assert go_on.wait(60)
        m.feed({"type": "frame", "step": 2, "phi": 0.2})
        m.feed({"type": "done", "status": "completed"})

    t = threading.Thread(target=feeder, daemon=True)
    t.start()
    for line in RunStore(home).follow("hf-follow", poll=0.02):
        seen.append(line)
        if line.get("step") == 1:
            go_on.set()  # the follower has read step 1 while the remote run is still running
    t.join(60)
    assert [x["step"] for x in seen if x["type"] == "frame"] == [1, 2]
    assert seen[-1]["type"] == "done" and seen[-1]["status"] == "completed"

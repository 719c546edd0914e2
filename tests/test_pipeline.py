"""`carl --batch train --send-it`: sft → gate → grpo → eval → push in one run, through the real CLI and worker
(the tiny demo, a few steps per stage), pushing to the loopback Hub; a kill inside each stage, then `run resume`,
continues from that stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._tiny_fixture import tiny_cache, tiny_env  # noqa: F401

# every stage in seconds: a fixed short SFT, two GRPO steps, gates that let a barely trained model through
FAST = ["pipeline.sft.steps=20", "pipeline.sft.save_steps=10", "pipeline.sft.batch_size=32",
        "pipeline.gate.min_task_metric=0",
        "grpo.max_steps=2", "grpo.save_steps=1", "grpo.batch_size=8", "grpo.num_generations=4",
        "grpo.max_completion_length=5", "dataset.max_samples=256", "eval.threshold=0", "eval.min_distinct=0",
        "eval.max_top_share=1", "eval.phi_min=0", "tracking.trackio=false"]


def sets(items):
    return [a for s in items for a in ("--set", s)]


def carl(*args, env=None, timeout=300):
    p = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", *args], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    return p.returncode, p.stdout, p.stderr


def state(run_dir) -> dict:
    return {s["name"]: s for s in json.loads((Path(run_dir) / "pipeline.json").read_text())["stages"]}


def test_dry_run_lists_every_stage_with_its_settings():
    rc, out, err = carl("train", "--send-it", "--dry-run", "--set", "train.output_repo=alice/demo")
    assert rc == 0, err
    plan = json.loads(out)
    stages = plan["pipeline"]["stages"]
    assert plan["send_it"] is True and [s["name"] for s in stages] == ["sft", "gate", "grpo", "eval", "push"]
    by = {s["name"]: s["settings"] for s in stages}
    assert by["sft"]["target"] == 0.35 and by["sft"]["base_model"] == "builtin:tiny (untrained)"
    assert by["gate"] == {"min_task_metric": 0.2, "metric": "exact"}
    assert by["grpo"]["from"] == "the sft model" and by["eval"]["threshold"] == 0.3  # the demo task's gate (engine.builtins: builtin:addition)
    assert by["push"]["repo"] == "alice/demo" and by["push"]["skipped"] is False
    assert not os.path.exists(os.path.join(os.environ["CARL_HOME"], "runs"))  # touched nothing
    rc, out, err = carl("train", "--send-it", "--dry-run", "--set", "pipeline.stages=[grpo, sft]")
    assert rc == 2 and "pipeline.stages" in json.loads(err.strip().splitlines()[-1])["error"]["message"]


@pytest.mark.slow
def test_send_it_runs_every_stage_and_pushes_to_the_hub(tiny_env, hub):
    rc, out, err = carl("train", "--send-it", *sets(FAST + ["train.output_repo=alice/demo"]),
                        env={"HF_HUB_OFFLINE": "0"})  # the worker reaches the loopback Hub (HF_ENDPOINT)
    assert rc == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    done = lines[-1]
    assert done["type"] == "done" and done["status"] == "completed"
    st = state(done["run_dir"])
    assert [st[n]["status"] for n in ("sft", "gate", "grpo", "eval", "push")] == ["done"] * 5
    assert st["sft"]["detail"]["steps"] == 20 and st["gate"]["key"] == "pass" and st["eval"]["key"] == "pass"
    assert isinstance(st["sft"]["key"], float) and isinstance(st["grpo"]["key"], float)
    repo = hub.repos["alice/demo"]
    rev = st["push"]["key"]
    assert rev == repo.commits[-1], "the pushed revision is the Hub's last commit"
    prefix = f"runs/{done['run_id']}"
    assert any(p.startswith(f"{prefix}/final/") and p.endswith(".safetensors") for p in repo.files)
    assert f"{prefix}/pipeline.json" in repo.files
    # frames and events carry their stage; the push event names the revision
    frames = [x for x in lines if x["type"] == "frame"]
    assert [f["step"] for f in frames] == [1, 2] and {f["stage"] for f in frames} == {"grpo"}
    events = [x for x in lines if x["type"] == "event"]
    assert all(e.get("stage") for e in events)
    assert {e["stage"] for e in events if e["name"] == "stage_end"} == {"sft", "gate", "grpo", "eval", "push"}
    assert [e["revision"] for e in events if e["name"] == "push"] == [rev]
    assert {e["name"] for e in events if e["stage"] == "sft"} >= {"sft", "checkpoint", "eval"}
    # one ledger block per stage
    rc, out, _ = carl("ledger", "show", "--last", "200")
    blocks = json.loads(out)["blocks"]
    mine = [b["payload"]["stage"] for b in blocks if b["action"] == "pipeline.stage"
            and b["payload"]["run_id"] == done["run_id"]]
    assert mine == ["sft", "gate", "grpo", "eval", "push"]
    assert any(b["action"] == "push" and b["payload"].get("revision") == rev for b in blocks)


@pytest.mark.slow
def test_the_gate_stops_the_pipeline_and_says_why(tiny_env):
    rc, out, err = carl("train", "--send-it", *sets(FAST[:3] + FAST[4:] + ["pipeline.gate.min_task_metric=0.9"]))
    assert rc == 1
    done = json.loads(out.splitlines()[-1])
    assert done["status"] == "failed" and "min_task_metric 0.9" in done["error"]
    st = state(done["run_dir"])
    assert st["gate"]["status"] == "failed" and st["gate"]["key"] == "fail"
    assert st["grpo"]["status"] == st["eval"]["status"] == "waiting"
    assert not (Path(done["run_dir"]) / "frames.jsonl").exists(), "GRPO never started"
    rc, _, err = carl("run", "resume", done["run_id"])
    assert rc == 2 and "failed its check" in err


def _log_size(run_dir: Path) -> int:
    log = run_dir / "stdout.log"
    return log.stat().st_size if log.is_file() else 0


def _wait_holding(run_dir: Path, stage: str, since: int, timeout: float = 240) -> int:
    """Wait until the worker started after byte ``since`` of stdout.log says it holds in ``stage``; its pid."""
    deadline = time.time() + timeout
    log = run_dir / "stdout.log"
    while time.time() < deadline:
        with open(log, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
        if f"holding in stage {stage}" in text:
            return int(json.loads((run_dir / "meta.json").read_text())["pid"])
        if "Traceback" in text:
            raise AssertionError(text[-3000:])
        time.sleep(0.3)
    raise AssertionError(f"never held in {stage}: {log.read_text(errors='replace')[-3000:]}")


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if st in ("Z", "X"):
            return
        time.sleep(0.1)


@pytest.mark.slow
def test_a_kill_in_each_stage_resumes_at_that_stage(tiny_env):
    rc, out, err = carl("train", "--send-it", "--detach", *sets(FAST), env={"CARL_PIPELINE_HOLD": "sft:10"})
    assert rc == 0, err
    run = json.loads(out)
    run_id, run_dir = run["run_id"], Path(run["run_dir"])
    _kill(_wait_holding(run_dir, "sft", 0))
    assert (run_dir / "sft" / "checkpoints" / "checkpoint-10").is_dir()

    # killed in sft (after its step-10 checkpoint) → resumes in sft from step 10; then killed in grpo after step 1
    since = _log_size(run_dir)
    rc, out, err = carl("run", "resume", run_id, "--detach", env={"CARL_PIPELINE_HOLD": "grpo:1"})
    assert rc == 0, err
    assert json.loads(out)["resumed_from"] == 10
    _kill(_wait_holding(run_dir, "grpo", since))
    st = state(run_dir)
    assert st["sft"]["status"] == "done" and st["sft"]["detail"]["steps"] == 20 and st["sft"]["resumed_from"] == 10
    sft_events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    sft_steps = [e["step"] for e in sft_events if e["name"] == "sft"]
    assert sft_steps == [5, 10, 15, 20], "no SFT progress line twice"
    sft_ended = st["sft"]["ended"]

    # killed in grpo (after its step-1 checkpoint) → resumes in grpo from step 1; then killed entering eval
    since = _log_size(run_dir)
    rc, out, err = carl("run", "resume", run_id, "--detach", env={"CARL_PIPELINE_HOLD": "eval"})
    assert rc == 0, err
    assert json.loads(out)["resumed_from"] == 1
    _kill(_wait_holding(run_dir, "eval", since))
    st = state(run_dir)
    assert st["grpo"]["status"] == "done" and st["grpo"]["resumed_from"] == 1 and st["sft"]["ended"] == sft_ended
    frames = [json.loads(x)["step"] for x in (run_dir / "frames.jsonl").read_text().splitlines()]
    assert frames == [1, 2], "GRPO continued from its checkpoint, no frame twice"

    # killed in eval → eval again; killed entering push → push again, then the run completes
    since = _log_size(run_dir)
    rc, out, err = carl("run", "resume", run_id, "--detach", env={"CARL_PIPELINE_HOLD": "push"})
    assert rc == 0, err
    _kill(_wait_holding(run_dir, "push", since))
    assert state(run_dir)["eval"]["status"] == "done"
    rc, out, err = carl("run", "resume", run_id)
    assert rc == 0, err
    done = json.loads(out.splitlines()[-1])
    assert done["status"] == "completed"
    st = state(run_dir)
    assert [st[n]["status"] for n in ("sft", "gate", "grpo", "eval", "push")] == \
        ["done", "done", "done", "done", "skipped"]
    assert st["sft"]["ended"] == sft_ended, "a finished stage never runs again"
    starts = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in starts if e["name"] == "stage_end"] == ["sft", "gate", "grpo", "eval", "push"]


def test_resume_cuts_what_the_unfinished_stage_wrote_after_its_checkpoint(tmp_path):
    """No training: a run dir shaped like one killed in grpo after its step-3 checkpoint."""
    from engine.config import validate_dict
    from engine.errors import ValidationError
    from engine.trainer.pipeline import init_state, prepare_resume, read_state, write_state

    d = tmp_path / "run"
    (d / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    (d / "checkpoints" / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (d / "meta.json").write_text("{}")
    state = init_state(d, validate_dict({}))
    for s in state["stages"][:2]:
        s["status"] = "done"
    state["stages"][2]["status"] = "running"
    write_state(d, state)
    (d / "frames.jsonl").write_text("".join(json.dumps({"step": i, "stage": "grpo"}) + "\n" for i in range(1, 6)))
    events = [{"name": "sft", "stage": "sft", "step": 20}, {"name": "stage_end", "stage": "sft", "step": 0},
              {"name": "stage_start", "stage": "grpo", "step": 0}, {"name": "checkpoint", "stage": "grpo", "step": 3},
              {"name": "checkpoint", "stage": "grpo", "step": 4}]
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert prepare_resume(d) == 3
    assert [json.loads(x)["step"] for x in (d / "frames.jsonl").read_text().splitlines()] == [1, 2, 3]
    kept = [(e["name"], e["stage"], e["step"]) for e in map(json.loads, (d / "events.jsonl").read_text().splitlines())]
    assert kept == [("sft", "sft", 20), ("stage_end", "sft", 0), ("checkpoint", "grpo", 3)]
    st = {s["name"]: s for s in read_state(d)["stages"]}
    assert st["grpo"]["status"] == "waiting" and st["grpo"]["resumed_from"] == 3 and st["sft"]["status"] == "done"
    assert json.loads((d / "meta.json").read_text())["pipeline"][2] == {"name": "grpo", "status": "waiting",
                                                                         "key": None, "key_name": "held-out"}
    st["grpo"].update(status="failed", verdict="fail", error="x")
    write_state(d, {"stages": list(st.values())})
    with pytest.raises(ValidationError, match="failed its check"):
        prepare_resume(d)


@pytest.mark.parametrize("stages", [["grpo", "sft"], ["sft", "sft"], []])
def test_pipeline_stages_are_an_ordered_subset(stages):
    from engine.config import validate_dict
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="pipeline.stages"):
        validate_dict({"pipeline": {"stages": stages}})
    assert validate_dict({"pipeline": {"stages": ["grpo", "eval"]}}).pipeline.stages == ["grpo", "eval"]

"""`carl --batch train / run / eval` through the batch entry `carl --batch` runs (``carl_tui.batch.main``, in this
process), JSON on stdout: `train` spawns its worker as a process of its own (which logs to trackio), the run and
eval verbs read the finished run."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from tests._tiny_fixture import SMALL, tiny_cache, tiny_env  # noqa: F401


@pytest.fixture
def batch(capsys):
    """`carl --batch ARGS` in this process: (exit code, stdout, stderr); ``env`` is set for this call only."""
    from carl_tui.batch import main

    def call(*args, env=None):
        with pytest.MonkeyPatch.context() as mp:
            for k, v in (env or {}).items():
                mp.setenv(k, v)
            capsys.readouterr()
            rc = main(list(args))
            out, err = capsys.readouterr()
        return rc, out, err

    return call


def test_dry_run_plan_and_accelerate_command(batch):
    rc, out, err = batch("train", "--dry-run", "--set", "compute.gpus=4", "--set", "compute.device=cpu")
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["dry_run"] is True and plan["model"] == "builtin:tiny" and plan["preset"] == "tiny-cpu"
    assert plan["task_metric"] == "exact" and plan["cascade"]["mode"] == "evidence"
    assert plan["cascade"]["combine"] == "varied_groups"
    assert plan["grpo"]["bf16"] is False and plan["grpo"]["use_cpu"] is True
    assert plan["grpo"]["gradient_checkpointing"] is False
    # compute.gpus counts on CUDA only: on CPU one process unless compute.processes says more (test_distributed)
    assert plan["world_size"] == 1 and plan["distributed"]["launcher"] == "python"
    assert plan["command"][-3:-1] == ["-m", "engine.trainer.worker"] and plan["command"][-1].endswith("<run_id>")
    rc, out, err = batch("train", "--dry-run", "--set", "compute.gpus=4", "--set", "compute.device=cuda")
    assert rc == 0, err
    plan = json.loads(out)
    assert " launch --config_file " in plan["launch"] and " --multi_gpu --num_processes 4 " in plan["launch"]
    assert plan["distributed"]["accelerate_config"]["distributed_type"] == "MULTI_GPU"
    assert not os.path.exists(os.path.join(os.environ["CARL_HOME"], "runs"))  # touched nothing


@pytest.mark.parametrize("args,code", [
    (["--set", "grpo.batch_size=7"], "carl.config"),
    (["--set", "compute.vllm=colocate"], "carl.config"),
    (["--set", "task.metric=nope"], "carl.config"),
])
def test_train_config_errors(args, code, batch):
    rc, out, err = batch("train", "--dry-run", *args)
    assert rc == 2 and out == ""
    assert json.loads(err.strip().splitlines()[-1])["error"]["code"] == code


@pytest.mark.slow
def test_train_streams_frames_then_run_and_eval_verbs(tiny_env, batch):
    sets = [a for s in SMALL + ["grpo.max_steps=3", "grpo.save_steps=3"] for a in ("--set", s)]
    rc, out, err = batch("train", *sets)  # spawns the worker: its own process, which logs to trackio
    assert rc == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    frames = [x for x in lines if x["type"] == "frame"]
    assert [f["step"] for f in frames] == [1, 2, 3]
    for f in frames:
        assert {"run_id", "step", "phi", "entropy", "reward_mean", "task_reward", "carl_reward", "gate", "loss",
                "lr", "elapsed_s"} <= set(f)
        assert f["gate"] in ("A", "B")
    assert {x["name"] for x in lines if x["type"] == "event"} >= {"eval", "checkpoint"}
    done = lines[-1]
    assert done["type"] == "done" and done["status"] == "completed" and os.path.isdir(done["run_dir"])
    assert "before" in err and "after" in err  # held-out accuracy printed for humans on stderr
    run_id = done["run_id"]
    # the worker logged the same metrics to trackio, in the TRACKIO_DIR of its environment (project carl-demo)
    db = Path(os.environ["TRACKIO_DIR"]) / "carl-demo.db"
    assert db.is_file()
    with sqlite3.connect(db) as con:
        steps = sorted(r[0] for r in con.execute("SELECT step FROM metrics WHERE run_name = ?", (run_id,)))
    assert steps == [1, 2, 3]
    # the worker log ends without trackio's "Uploading logs to Trackio (please wait...)" (nothing is uploaded
    # without a Space): carl says where the metrics are instead
    log = (Path(done["run_dir"]) / "stdout.log").read_text(errors="replace")
    assert "Uploading logs to Trackio" not in log
    assert f"carl: trackio metrics saved in {os.environ['TRACKIO_DIR']}" in log.splitlines()

    rc, out, _ = batch("run", "list")
    assert rc == 0 and json.loads(out)["runs"][0]["run_id"] == run_id
    rc, out, _ = batch("run", "show", run_id[:15])
    shown = json.loads(out)
    assert shown["status"] == "completed" and shown["last_step"] == 3 and shown["config"]["grpo"]["max_steps"] == 3
    rc, out, _ = batch("run", "attach", run_id)
    assert rc == 0 and [json.loads(x)["type"] for x in out.splitlines()][-1] == "done"
    rc, out, err = batch("run", "diff", run_id, run_id)
    assert rc == 0, err
    assert json.loads(out)["aligned_steps"] == 3

    # eval gate: threshold 0 passes on the task metric; the verdict follows the rule and says why
    rc, out, err = batch("eval", "--run", run_id, "--threshold", "0", "--n", "40")
    res = json.loads(out)
    m = res["metrics"]
    expect = m["phi_mean"] >= 3 / 16 and m["distinct_fraction"] >= 0.05 and m["top_answer_share"] <= 0.5
    assert res["pass"] is expect and rc == (0 if expect else 1) and res["reason"]
    rc, out, err = batch("eval", "--run", run_id, "--threshold", "1", "--n", "40")
    assert rc == 1 and json.loads(out)["pass"] is False
    # push without a token: a clear credential error before any work
    rc, out, err = batch("eval", "--run", run_id, "--push", "--repo", "me/model",
                        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": os.environ["CARL_HOME"]})
    assert rc == 3 and json.loads(err.strip().splitlines()[-1])["error"]["code"] == "carl.credential"


def test_eval_fails_closed_without_coherence_data():
    from engine.config import EvalSection
    from engine.trainer.evalgate import decide

    healthy = {"distinct_fraction": 0.5, "top_answer_share": 0.1, "phi_spread": 0.05}
    ok, why = decide({"task_metric": 1.0, "phi_mean": None, "discontinuity": 0.5, **healthy}, EvalSection())
    assert not ok and "coherence data missing" in why
    ok, why = decide({"task_metric": 1.0, "phi_mean": 0.5, "distinct_fraction": float("nan"),
                      "top_answer_share": 0.1}, EvalSection())
    assert not ok and "coherence data missing" in why
    ok, why = decide({"task_metric": 0.9, "phi_mean": 0.5, **healthy}, EvalSection(threshold=0.5))
    assert ok
    # the discontinuity band is no longer checked (it passed collapse: docs/coherence.md)
    ok, why = decide({"task_metric": 0.9, "phi_mean": 0.5, "discontinuity": 0.95, **healthy}, EvalSection())
    assert ok
    ok, why = decide({"task_metric": 0.9, "phi_mean": 0.1, **healthy, "top_answer_share": 0.8}, EvalSection())
    assert not ok and "phi_mean" in why and "one answer for 80% of prompts" in why

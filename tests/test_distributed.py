"""Two real CPU processes (torchrun, DDP over gloo) training the tiny demo through `carl --batch`: one run, one
set of frames and ledger blocks, the same gate step on both ranks, kill -9 of a rank ends the run, resume goes on
from the checkpoint, and no process outlives the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._tiny_fixture import SMALL, tiny_cache, tiny_env  # noqa: F401

pytestmark = pytest.mark.slow

TWO = ["compute.processes=2", "compute.device=cpu", "tracking.trackio=false", "grpo.save_steps=2",
       "cascade.mode=fixed", "cascade.fixed_step=2", "cascade.combine=varied_groups"]


def carl(*args, timeout=300):
    p = subprocess.run([sys.executable, "-m", "carl_tui", "--batch", *args], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ))
    return p.returncode, p.stdout, p.stderr


def _sets(extra):
    return [x for s in SMALL + TWO + extra for x in ("--set", s)]


def _wait(cond, timeout=240.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return st not in ("Z", "X")


def _run_processes(run_dir: Path) -> list[int]:
    """Live processes whose command line names this run directory (supervisor, launcher, ranks)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(run_dir) in cmd and _alive(int(p.name)):
            out.append(int(p.name))
    return out


def _ranks(run_dir: Path, suffix="json") -> dict[int, dict]:
    out = {}
    for f in (run_dir / "ranks").glob(f"rank-*.{suffix}"):
        try:
            d = json.loads(f.read_text())
        except ValueError:
            continue
        out[d["rank"]] = d
    return out


def _frames(run_dir: Path) -> list[int]:
    p = run_dir / "frames.jsonl"
    return [json.loads(x)["step"] for x in p.read_text().splitlines()] if p.exists() else []


def _ledger(run_id: str) -> list[dict]:
    rc, out, err = carl("ledger", "show")
    assert rc == 0, err
    blocks = json.loads(out)["blocks"]
    return [b for b in blocks if (b.get("payload") or {}).get("run_id") == run_id]


def test_two_processes_kill_resume_and_stop(tiny_env):
    # --- one run over two ranks; kill -9 of the non-main rank once the step-2 checkpoint exists
    rc, out, err = carl("train", "--detach", *_sets(["grpo.max_steps=200"]))
    assert rc == 0, err
    started = json.loads(out)
    run_id, run_dir, sup = started["run_id"], Path(started["run_dir"]), started["pid"]
    ck2 = run_dir / "checkpoints" / "checkpoint-2"
    ranks = _wait(lambda: (lambda r: r if len(r) == 2 and (ck2 / "carl_cascade.json").is_file() else None)(
        _ranks(run_dir)), what="both ranks and checkpoint-2")
    assert {r["world_size_env"] for r in ranks.values()} == {2}
    pids = {k: v["pid"] for k, v in ranks.items()}
    assert len(set(pids.values())) == 2 and sup not in pids.values()
    os.kill(pids[1], signal.SIGKILL)
    _wait(lambda: not _alive(sup), timeout=60, what="the supervisor to end")
    assert _run_processes(run_dir) == [], "a process of the run outlived it"
    for pid in pids.values():
        assert not _alive(pid)
    rc, out, err = carl("run", "show", run_id)
    shown = json.loads(out)
    assert shown["status"] == "failed" and "rank 1" in shown["error"]
    assert shown["world_size"] == 2 and shown["last_checkpoint"] >= 2
    killed_at = shown["last_checkpoint"]

    # --- resume: both ranks go on from the last checkpoint with the gate state; then `run stop` stops both
    rc, out, err = carl("run", "resume", run_id, "--detach")
    assert rc == 0, err
    sup = json.loads(out)["pid"]
    _wait(lambda: len(_frames(run_dir)) >= killed_at + 2, what="two frames after the resume")
    rc, out, err = carl("run", "stop", run_id, "--wait", "120")
    assert rc == 0 and json.loads(out)["status"] == "stopped", (out, err)
    _wait(lambda: not _alive(sup), timeout=60, what="the supervisor to end")
    assert _run_processes(run_dir) == [], "a process of the run outlived it"

    ranks = _ranks(run_dir, "exit")
    assert set(ranks) == {0, 1}
    for r in ranks.values():  # both ranks really trained in one gloo group of 2, on the same global batch
        assert r["status"] == "stopped"
        assert r["world_size"] == 2 and r["backend"] == "gloo"
        assert r["local_completions_per_step"] == 8 and r["completions_per_step"] == 16
        assert r["gate_opened_at"] == 2  # restored from the checkpoint's cascade state, the same on both ranks
    assert ranks[0]["pid"] != ranks[1]["pid"]
    stop_step = ranks[0]["last_step"]
    assert ranks[1]["last_step"] == stop_step and killed_at < stop_step < 200  # the same step on both ranks
    assert (run_dir / "checkpoints" / f"checkpoint-{stop_step}" / "trainer_state.json").is_file()

    steps = _frames(run_dir)
    assert steps == list(range(1, stop_step + 1)), steps  # each step once: none lost or repeated across the kill
    frames = [json.loads(x) for x in (run_dir / "frames.jsonl").read_text().splitlines()]
    assert [f["gate"] for f in frames] == ["A"] + ["B"] * (stop_step - 1)
    log = (run_dir / "stdout.log").read_text()
    assert "rank 0: gate opened at step 2" in log and "rank 1: gate opened at step 2" in log

    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["name"] == "gate_open"] == [2]
    cks = [e["step"] for e in events if e["name"] == "checkpoint"]
    assert len(cks) == len(set(cks)) and killed_at in cks and stop_step in cks

    blocks = _ledger(run_id)
    starts = [b["payload"] for b in blocks if b["action"] == "run.start"]
    assert [s["resume"] for s in starts] == [False, True]  # one block per launch, not one per rank
    assert {s["world_size"] for s in starts} == {2}
    actions = [b["action"] for b in blocks]
    assert actions.count("gate.open") == 1 and actions.count("run.fail") == 1 and actions.count("run.stop") == 1

    rc, out, err = carl("run", "show", run_id)
    shown = json.loads(out)
    assert shown["status"] == "stopped" and shown["world_size"] == 2 and shown["strategy"] == "ddp"


def test_dry_run_prints_each_nodes_command_and_the_zero3_config():
    rc, out, err = carl("train", "--dry-run", "--set", "compute.device=cuda", "--set", "compute.gpus=8",
                        "--set", "compute.strategy=zero3")
    assert rc == 0, err
    plan = json.loads(out)
    d = plan["distributed"]
    assert plan["world_size"] == 8 and d["launcher"] == "accelerate" and d["strategy"] == "zero3"
    ac = d["accelerate_config"]
    assert ac["distributed_type"] == "DEEPSPEED" and ac["deepspeed_config"]["zero_stage"] == 3
    assert ac["num_processes"] == 8 and ac["mixed_precision"] == "bf16"
    assert plan["command"][1:4] == ["launch", "--config_file", d["accelerate_config_file"]]
    assert plan["command"][-3:-1] == ["-m", "engine.trainer.worker"]

    rc, out, err = carl("train", "--dry-run", "--set", "compute.device=cuda", "--set", "compute.processes=16",
                        "--set", "compute.nodes=2", "--set", "compute.main_process_ip=10.0.0.1",
                        "--set", "compute.strategy=fsdp")
    assert rc == 0, err
    d = json.loads(out)["distributed"]
    assert d["per_node"] == 8 and d["accelerate_config"]["distributed_type"] == "FSDP"
    assert d["accelerate_config"]["main_process_port"] == 29500
    cmds = d["commands"]
    assert [c["node_rank"] for c in cmds] == [0, 1]
    for k, c in enumerate(cmds):
        cmd = c["command"]
        assert cmd[cmd.index("--machine_rank") + 1] == str(k)
        assert cmd[cmd.index("--main_process_ip") + 1] == "10.0.0.1"
        assert cmd[cmd.index("--num_processes") + 1] == "16"

    rc, out, err = carl("train", "--dry-run", "--set", "compute.device=cpu", "--set", "compute.processes=2")
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["distributed"]["launcher"] == "torchrun" and plan["world_size"] == 2
    assert "--nproc_per_node" in plan["command"] and plan["launch"].startswith("ACCELERATE_USE_CPU=1 ")

    rc, out, err = carl("train", "--dry-run", "--set", "compute.nodes=2", "--set", "compute.processes=3")
    assert rc == 2 and json.loads(err.strip().splitlines()[-1])["error"]["code"] == "carl.config"


_GATHER_CHILD = r"""
import json, os, sys
import torch.distributed as td
td.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=int(os.environ["RANK"]),
                      world_size=int(os.environ["WORLD_SIZE"]))
from engine.cascade import Cascade, FixedGate
from engine.trainer import dist
rows = json.loads(sys.argv[2])[dist.rank()]
carl, task = rows["carl"], rows["task"]
all_carl, all_task, cryst, offset = dist.gather_batch(carl, {"exact": task}, [1.0] * len(carl))
cascade = Cascade(FixedGate(1), weight=1.0, combine="varied_groups", cap=0.25, group=4)
cascade.observe(1, {})
out = cascade.combine(all_carl, 1, all_task["exact"])[offset: offset + len(carl)]
stop = dist.any_rank(dist.rank() == 1)
print(json.dumps({"rank": dist.rank(), "world": dist.world_size(), "offset": offset, "out": out, "stop": stop,
                  "n": len(all_carl)}))
td.destroy_process_group()
"""


def test_gather_batch_combines_a_group_that_straddles_two_ranks(tmp_path):
    # groups of 4: rank 0 holds 6 rows (group 0 and half of group 1), rank 1 the other half of group 1 — what
    # TRL's sampler does when the per-process count is not a multiple of num_generations
    carl = [0.1, 0.9, 0.5, 0.3, 0.2, 0.8, 0.6, 0.4]
    task = [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    rows = [{"carl": carl[:6], "task": task[:6]}, {"carl": carl[6:], "task": task[6:]}]
    env = {**os.environ, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _GATHER_CHILD, str(tmp_path / "store"), json.dumps(rows)],
                              env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        res = [json.loads(p.communicate(timeout=240)[0].strip().splitlines()[-1]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0]
    from engine.cascade import combine_varied_groups

    whole = combine_varied_groups(carl, task, 4, 1.0, 0.25)
    assert [r["world"] for r in res] == [2, 2] and [r["n"] for r in res] == [8, 8]
    assert [r["offset"] for r in res] == [0, 6]
    assert res[0]["out"] + res[1]["out"] == pytest.approx(whole)  # exactly the one-process combination
    local1 = combine_varied_groups(carl[6:], task[6:], 2, 1.0, 0.25)  # what a rank alone would have done
    assert res[1]["out"] != pytest.approx(local1)
    assert [r["stop"] for r in res] == [True, True]  # one rank's stop request stops both


@pytest.mark.parametrize("strategy,kind,extra", [
    ("ddp", "MULTI_GPU", {"gpu_ids": "all"}),
    ("zero2", "DEEPSPEED", {"deepspeed_config": {"zero_stage": 2, "zero3_init_flag": False}}),
    ("zero3", "DEEPSPEED", {"deepspeed_config": {"zero_stage": 3, "zero3_init_flag": True,
                                                 "zero3_save_16bit_model": True}}),
    ("fsdp", "FSDP", {"fsdp_config": {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                      "fsdp_state_dict_type": "FULL_STATE_DICT"}}),
])
def test_accelerate_config_per_strategy(strategy, kind, extra):
    from engine.config import load_config
    from engine.trainer.launch import accelerate_config, launcher, maybe_distributed, world_size

    cfg, _ = load_config(None, ["compute.device=cuda", "compute.gpus=4", f"compute.strategy={strategy}"])
    assert world_size(cfg) == 4 and launcher(cfg) == "accelerate"
    ac = accelerate_config(cfg)
    assert ac["distributed_type"] == kind and ac["num_processes"] == 4 and ac["use_cpu"] is False
    for key, want in extra.items():
        if isinstance(want, dict):
            assert {k: ac[key][k] for k in want} == want
        else:
            assert ac[key] == want
    assert maybe_distributed(cfg.model_dump(mode="json"))
    cpu, _ = load_config(None, ["compute.device=cpu", "compute.gpus=4"])
    assert world_size(cpu) == 1 and launcher(cpu) == "python" and not maybe_distributed(cpu.model_dump(mode="json"))


# ------------------------------------------------------------------------------------------ issue 25
def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: every connection is refused
    return port


def _events(run_dir: Path) -> list[dict]:
    p = run_dir / "events.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def _done(out: str) -> dict:
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")][-1]


def test_fresh_home_two_processes_complete_and_a_failing_upload_is_an_event(tmp_path, monkeypatch):
    # a fresh machine: nothing built (CARL_HOME is the test's own, the demo cache empty) — the supervisor builds
    # the demo model (its warm start is a TRL run of its own) before any rank starts; the ranks never wait on it
    cold = tmp_path / "cold-cache"
    monkeypatch.setenv("CARL_TINY_CACHE", str(cold))
    monkeypatch.setenv("CARL_TINY_SFT_STEPS", "1")
    monkeypatch.setenv("CARL_LEDGER_PASSPHRASE", "test")
    # and a Hub that refuses every connection: the uploads fail in the background, the run completes
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_TOKEN", "hf_procs_test_token_never_printed")
    rc, out, err = carl("train", *_sets(["grpo.max_steps=2", "train.output_repo=alice/out"]), timeout=900)
    assert rc == 0, err[-3000:]
    done = _done(out)
    assert done["status"] == "completed", done
    run_dir = Path(done["run_dir"])
    events = _events(run_dir)
    prep = [e for e in events if e["name"] == "prepare"]
    assert [(e["what"], e["status"]) for e in prep] == [("builtin:tiny", "building"), ("run", "done")]
    log = (run_dir / "stdout.log").read_text()
    assert "supervisor: tiny: building the demo model" in log and "rank 0: tiny:" not in log \
        and "rank 1: tiny:" not in log
    assert (cold / "tiny-v3-sft1" / "carl_tiny.json").is_file()
    ranks = _ranks(run_dir, "exit")
    assert set(ranks) == {0, 1} and {r["world_size"] for r in ranks.values()} == {2}
    assert {r["status"] for r in ranks.values()} == {"completed"}
    failed = [e for e in events if e["name"] == "upload_error"]
    assert failed and {e["code"] for e in failed} == {"carl.network"} and failed[0]["attempts"] == 3
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["output"]["errors"] >= len(failed)
    assert "retrying in 2s (attempt 1 of 3)" in log
    assert not (run_dir / ".upload").exists()  # the hard-linked staging copies are gone
    for text in (log, out, err, (run_dir / "events.jsonl").read_text()):
        assert "hf_procs_test_token_never_printed" not in text
    assert _run_processes(run_dir) == []


FORCED2 = ["grpo.batch_size=8", "grpo.num_generations=4", "grpo.max_completion_length=4",
           "grpo.learning_rate=5e-3", 'cascade.mode="off"', "cascade.warmup_steps=0", "cascade.combine=add",
           "rewards.carl.weight=4"]


def test_two_processes_send_it_with_a_collapse_closing_the_gate_on_both_ranks(tiny_env):
    # the whole pipeline over two ranks: rank 0 decides each stage's verdict and the collapse alarm, both ranks
    # apply them at the same step (the gate closes on both: CARL's weight drops to 0 on both at the same step)
    rc, out, err = carl("train", "--send-it", *_sets(
        ["grpo.max_steps=40", "grpo.save_steps=40", *FORCED2, "cascade.on_collapse=close_gate",
         "pipeline.sft.steps=10", "pipeline.gate.min_task_metric=0", "eval.threshold=0", "eval.phi_min=0",
         "eval.min_distinct=0", "eval.max_top_share=1"]), timeout=900)
    assert rc == 0, err[-3000:]
    done = _done(out)
    assert done["status"] == "completed", done
    run_dir = Path(done["run_dir"])
    state = json.loads((run_dir / "pipeline.json").read_text())
    assert [(s["name"], s["status"]) for s in state["stages"]] == [
        ("sft", "done"), ("gate", "done"), ("grpo", "done"), ("eval", "done"), ("push", "skipped")]
    assert (run_dir / "sft" / "model" / "config.json").is_file() and (run_dir / "final" / "config.json").is_file()
    events = _events(run_dir)
    onsets = [e for e in events if e["name"] == "collapse_onset"]
    assert len(onsets) == 1 and onsets[0]["action"] == "close_gate", onsets
    alarm = onsets[0]["step"]
    frames = [json.loads(x) for x in (run_dir / "frames.jsonl").read_text().splitlines()]
    assert [f["step"] for f in frames] == list(range(1, 41))
    assert all(f["carl_weight"] == 4.0 for f in frames if f["step"] <= alarm)
    assert all(f["carl_weight"] == 0.0 and f["gate"] == "A" for f in frames if f["step"] > alarm)
    ranks = _ranks(run_dir, "exit")
    assert set(ranks) == {0, 1}
    for r in ranks.values():  # each rank's own cascade: closed at the same step, CARL off at the end
        assert r["gate_closed_at"] == alarm + 1 and r["carl_weight_last"] == 0.0 and r["last_step"] == 40
    log = (run_dir / "stdout.log").read_text()
    assert f"rank 1: collapse onset at step {alarm}" in log and f"rank 0: collapse onset at step {alarm}" in log
    assert [e["stage"] for e in events if e["name"] == "stage_end"] == ["sft", "gate", "grpo", "eval", "push"]
    assert _run_processes(run_dir) == []


def _child(args, env=None):
    """``carl --batch …`` as a child with default SIGINT handling (a background job inherits it ignored)."""
    def restore():
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-m", "carl_tui", "--batch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or dict(os.environ), preexec_fn=restore)


def _run_dir_of(home: Path) -> Path:
    return _wait(lambda: next(iter(sorted((home / "runs").glob("*/meta.json"))), None), what="the run").parent


def test_a_stuck_rank_fails_the_run_with_carl_run_hung_and_nothing_is_left(tiny_env, tmp_path):
    proc = _child(["train", *_sets(["grpo.max_steps=200", "compute.hang_timeout_s=30"])])
    try:
        run_dir = _run_dir_of(Path(os.environ["CARL_HOME"]))
        _wait(lambda: len(_frames(run_dir)) >= 1, what="a first frame")
        stuck = _ranks(run_dir)[1]["pid"]
        os.kill(stuck, signal.SIGSTOP)  # rank 1 stops making progress (rank 0 then waits in the next collective)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    error = json.loads(err.strip().splitlines()[-1])["error"]
    assert error["code"] == "carl.run.hung"
    assert error["message"].startswith("rank 1 made no progress for ") and "stopped (SIGSTOP)" in error["message"]
    assert _done(out)["status"] == "failed"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["error_code"] == "carl.run.hung"
    hung = [e for e in _events(run_dir) if e["name"] == "hung"]
    assert len(hung) == 1 and hung[0]["rank"] == 1 and hung[0]["doing"]
    stack0 = (run_dir / "ranks" / "rank-0.stack").read_text()
    assert "Thread" in stack0 and "File " in stack0  # rank 0's Python stack, where it waited
    assert _run_processes(run_dir) == [] and not _alive(stuck)


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_a_stuck_run_stops_after_the_grace_on_ctrl_c_or_when_the_cli_is_killed(tiny_env, how):
    proc = _child(["train", *_sets(["grpo.max_steps=200", "compute.hang_timeout_s=0", "compute.stop_grace_s=5"])])
    try:
        run_dir = _run_dir_of(Path(os.environ["CARL_HOME"]))
        _wait(lambda: len(_frames(run_dir)) >= 1, what="a first frame")
        stuck = _ranks(run_dir)[1]["pid"]
        os.kill(stuck, signal.SIGSTOP)  # stuck: the graceful stop cannot happen (the ranks never agree)
        if how == "ctrl-c":  # what a terminal sends: the CLI asks for the stop and waits for it
            os.kill(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 130 and _done(out)["status"] == "stopped", err[-2000:]
        else:  # the CLI that owned the run is gone (SIGKILL: no cleanup of its own)
            proc.kill()
            proc.wait(timeout=30)
        sup = json.loads((run_dir / "meta.json").read_text())["pid"]
        _wait(lambda: not _alive(sup), timeout=120, what="the supervisor to end")
    finally:
        if proc.poll() is None:
            proc.kill()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "stopped" and "compute.stop_grace_s (5s)" in meta["error"]
    log = (run_dir / "stdout.log").read_text()
    if how == "kill -9":
        assert f"the carl process that started the run (pid {proc.pid}) is gone" in log
    else:
        assert "supervisor: signal 15: asking the ranks to stop" in log
    assert _run_processes(run_dir) == [] and not _alive(stuck)


def test_a_second_process_waits_for_the_demo_build_and_says_so(tmp_path):
    from engine.trainer.tiny import ensure_tiny, tiny_dir

    root = tmp_path / "cache"
    lock = str(tiny_dir(root, 0)) + ".lock"
    root.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               "l = FileLock(sys.argv[1]); l.acquire(); print('held', flush=True); time.sleep(3)",
                               lock], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # another carl process is building it
        said: list[str] = []
        got = ensure_tiny(root, sft_steps=0, log=said.append)
    finally:
        holder.kill()
        holder.wait()
    assert said[0] == f"tiny: waiting for another carl process building the demo model ({tiny_dir(root, 0)}.lock)"
    assert (got / "carl_tiny.json").is_file()  # built once the other process let go of the lock


@pytest.mark.parametrize("gpus,nodes", [(1, 2), (2, 2), (8, 1)])
def test_launch_plans_start_gpus_times_nodes_processes(gpus, nodes, tmp_path):
    """Each node's command, read by accelerate's and torchrun's own argument parsing, starts ``gpus`` processes
    on that node and ``gpus × nodes`` over all (the plan's world size), and the run store starts it through the
    supervisor (1 GPU × 2 nodes used to start one bare worker)."""
    import yaml
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env
    from torch.distributed.run import config_from_args, get_args_parser

    from engine.config import load_config
    from engine.trainer.launch import accelerate_config, maybe_distributed, plan

    multi = ["compute.main_process_ip=10.0.0.1", "compute.main_process_port=29555"] if nodes > 1 else []
    cfg, _ = load_config(None, ["compute.device=cuda", f"compute.gpus={gpus}", f"compute.nodes={nodes}", *multi])
    p = plan(cfg, str(tmp_path), device="cuda")
    (tmp_path / "accelerate.yaml").write_text(yaml.safe_dump(accelerate_config(cfg, "cuda")))  # as the supervisor
    assert p["world_size"] == gpus * nodes and len(p["commands"]) == nodes
    assert maybe_distributed(cfg.model_dump(mode="json")) == (gpus * nodes > 1)
    for k, node in enumerate(p["commands"]):
        cmd = node["command"]
        if gpus * nodes == 1:
            assert cmd[1:3] == ["-m", "engine.trainer.worker"]
            continue
        assert cmd[1] == "launch"
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[2:]))
        assert args.num_processes == gpus * nodes and args.num_machines == nodes and int(args.machine_rank) == k
        prepare_multi_gpu_env(args)  # accelerate's own split over the machines: what it hands to torchrun
        assert int(args.nproc_per_node) == gpus, cmd
        assert args.training_script == "engine.trainer.worker" and args.module

    # the same shape on CPUs: torchrun's own parser and config
    cpu, _ = load_config(None, ["compute.device=cpu", f"compute.processes={gpus * nodes}", f"compute.nodes={nodes}",
                                *multi])
    p = plan(cpu, str(tmp_path), device="cpu")
    assert p["world_size"] == gpus * nodes
    for k, node in enumerate(p["commands"]):
        cmd = node["command"]
        if gpus * nodes == 1:
            continue
        assert cmd[1:3] == ["-m", "torch.distributed.run"]
        config, entry, entry_args = config_from_args(get_args_parser().parse_args(cmd[3:]))
        assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (nodes, nodes, gpus)
        assert entry_args[:2] == ["-m", "engine.trainer.worker"] or "engine.trainer.worker" in entry_args

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

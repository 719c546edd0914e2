"""Completions per second of the demo with 1 vs 2 training processes (CPU: DDP over gloo).

Both arms are real runs through the run store — the same path as ``carl --batch train``: one worker process, or
the supervisor + torchrun + two ranks (compute.processes=2). Each process keeps the same per-process batch
(``--batch`` completions), so a step of the 2-process arm trains twice as many completions. Throughput is
measured between frames (median seconds between consecutive frames, the first WARMUP steps dropped), i.e.
without start-up, model load and eval: completions/s = completions per step / median step wall time.
The arms run interleaved for ``--rounds`` rounds, so load from other processes hits them alike; the ratio
(2 processes / 1 process) is from the same run. On two shared CPU cores two processes may well be no faster.

    python bench/distributed.py [--steps 20] [--rounds 2] [--batch 8] [--gens 4]

The multi-GPU part (``--device cuda``, for a machine with two or more GPUs; not run here — no GPU): the same
1-vs-2 comparison over NCCL, then one 2-GPU run per ``--strategies`` entry (ddp, and zero2/zero3 when deepspeed
is installed, fsdp), each checked for status completed and world_size 2, with its completions/s. With fewer than
two GPUs it says so and exits 0.

    python bench/distributed.py --device cuda [--strategies ddp,zero2,zero3,fsdp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WARMUP = 2


def run_once(processes: int, sets: list[str], timeout: float = 1800.0, device: str = "cpu",
             strategy: str = "ddp") -> dict:
    from engine.config import load_config
    from engine.runs import TERMINAL, RunStore, read_json
    from engine.trainer.plan import plan

    extra = [f"compute.processes={processes}", f"compute.device={device}", f"compute.strategy={strategy}",
             "tracking.trackio=false"]
    cfg, path = load_config(None, sets + extra)
    store = RunStore()
    run_id = store.create(cfg.to_yaml(), plan(cfg, path, run_dir=str(store.root / "<run_id>")))
    t0 = time.monotonic()
    store.spawn(run_id)
    d = store.run_dir(run_id)
    while time.monotonic() - t0 < timeout:
        if store.meta(run_id).get("status") in TERMINAL:
            break
        time.sleep(0.5)
    wall = time.monotonic() - t0
    meta = read_json(d / "meta.json")
    frames = [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()] \
        if (d / "frames.jsonl").exists() else []
    ts = [f["timestamp"] for f in frames]
    gaps = [b - a for a, b in zip(ts[WARMUP:], ts[WARMUP + 1:])]
    per_step = cfg.grpo.batch_size * processes
    step_s = statistics.median(gaps) if gaps else float("nan")
    return {"processes": processes, "strategy": strategy, "status": meta.get("status"), "world_size": meta.get("world_size", 1),
            "steps": len(frames), "step_s": step_s, "completions_per_step": per_step,
            "completions_per_s": per_step / step_s if gaps else float("nan"), "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gens", type=int, default=4)
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object too")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--strategies", default="ddp,zero2,zero3,fsdp", help="--device cuda: 2-GPU runs to check")
    args = ap.parse_args()
    if args.device == "cuda":
        import torch

        if torch.cuda.device_count() < 2:
            print(f"multi-GPU part skipped: {torch.cuda.device_count()} GPU(s) visible, it needs 2")
            return 0
    from bench._arms import setup_home

    setup_home()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the 2-process arm gets 1 thread per rank; so does this one
    sets = [f"grpo.max_steps={args.steps}", f"grpo.batch_size={args.batch}", f"grpo.num_generations={args.gens}",
            "grpo.max_completion_length=8", "grpo.save_steps=100000", "grpo.seed=0"]
    results: dict[int, list[dict]] = {1: [], 2: []}
    for r in range(args.rounds):
        for n in (1, 2):
            res = run_once(n, sets, device=args.device)
            if res["status"] != "completed" or res["world_size"] != n:
                print(f"round {r}: {n} process(es): {res['status']} (world_size {res['world_size']})", flush=True)
                return 1
            results[n].append(res)
            print(f"round {r}: {n} process(es)  {res['steps']} steps  {res['step_s'] * 1000:7.1f} ms/step  "
                  f"{res['completions_per_step']:3d} completions/step  {res['completions_per_s']:7.1f} completions/s"
                  f"  (run wall {res['wall_s']:.0f} s)", flush=True)
    cps = {n: statistics.median([x["completions_per_s"] for x in v]) for n, v in results.items()}
    ratio = cps[2] / cps[1]
    print(f"completions/s: 1 process {cps[1]:.1f}, 2 processes {cps[2]:.1f}; ratio 2/1 = {ratio:.2f} "
          f"(on {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f})")
    checked: list[dict] = []
    if args.device == "cuda":
        import importlib.util

        for strategy in [x for x in args.strategies.split(",") if x]:
            if strategy in ("zero2", "zero3") and importlib.util.find_spec("deepspeed") is None:
                print(f"{strategy}: skipped (deepspeed is not installed)")
                continue
            res = run_once(2, sets, device="cuda", strategy=strategy)
            checked.append(res)
            ok = res["status"] == "completed" and res["world_size"] == 2
            print(f"{strategy}: {'ok' if ok else 'FAILED'}  {res['status']}, world_size {res['world_size']}, "
                  f"{res['completions_per_s']:.1f} completions/s", flush=True)
            if not ok:
                return 1
    if args.json:
        print(json.dumps({"completions_per_s": cps, "ratio": ratio, "runs": results, "strategies": checked}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

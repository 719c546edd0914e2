"""Step-time overhead of the cascade in stage B vs plain TRL GRPO with the task reward only.

Same tiny model, batch, seed and steps, in one process:
  task      rewards.carl.enabled=false (plain TRL GRPO, task reward only)
  cascade   stage B from step 1 (cascade.mode=off, warmup 0, default combination): task + CARL from the
            generation-logit capture
  forward   the same, CARL field from one extra no-grad forward (CARL_REWARD_FORWARD=1)
The arms run interleaved for ``--rounds`` rounds (task, cascade, forward, task, …) so that load from other processes
hits them alike. Two measures, both against ``task`` from the same run:
  end-to-end  median step time over all rounds (first WARMUP steps of each run dropped) / task's median. Note
              that the arms train different policies (CARL changes the updates), so completion lengths and hence
              generation time differ a little too.
  accounted   (task median + the median time CARL itself took per step: the capture inside generate plus the
              CARL reward function — logged as carl/overhead_ms) / task median.
Target: cascade/task ≤ 1.15.

    python bench/train_overhead.py [--steps 40] [--rounds 3] [--batch 32] [--gens 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WARMUP = 3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--gens", type=int, default=8)
    args = ap.parse_args()
    from bench._arms import run_arm, setup_home

    setup_home()
    common = [f"grpo.max_steps={args.steps}", f"grpo.batch_size={args.batch}", f"grpo.num_generations={args.gens}",
              "grpo.save_steps=100000", "grpo.seed=0"]
    arms = {
        "task": (common + ["rewards.carl.enabled=false"], {}),
        "cascade": (common + ['cascade.mode="off"', "cascade.warmup_steps=0"], {}),
        "forward": (common + ['cascade.mode="off"', "cascade.warmup_steps=0"], {"CARL_REWARD_FORWARD": "1"}),
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    carl_ms: dict[str, list[float]] = {k: [] for k in arms}
    run_arm(common[1:] + ["grpo.max_steps=2", "rewards.carl.enabled=false"])  # build/load caches, warm imports
    for r in range(args.rounds):
        for name, (sets, env) in arms.items():
            res = run_arm(sets, env=env)
            frames = res["frames"][WARMUP:]
            t = [f["step_time"] for f in frames if f.get("step_time") is not None]
            times[name] += t
            carl_ms[name] += [(f.get("extra") or {}).get("carl/overhead_ms") for f in frames
                              if (f.get("extra") or {}).get("carl/overhead_ms") is not None]
            print(f"round {r}: {name:8s} {len(t):3d} steps  median step {statistics.median(t) * 1000:7.1f} ms",
                  flush=True)
    base = statistics.median(times["task"])
    print(f"\n{args.rounds} interleaved rounds × {args.steps} steps, batch {args.batch} × {args.gens} generations")
    print("\n| arm | median step (ms) | end-to-end ratio | CARL's own time (median ms/step) | accounted ratio |")
    print("|---|---|---|---|---|")
    for name in arms:
        m = statistics.median(times[name])
        c = statistics.median(carl_ms[name]) if carl_ms[name] else 0.0
        print(f"| {name} | {m * 1000:.1f} | {m / base:.3f}× | {c:.2f} | {(base + c / 1000) / base:.3f}× |")
    e2e = statistics.median(times["cascade"]) / base
    acc = (base + (statistics.median(carl_ms["cascade"]) / 1000 if carl_ms["cascade"] else 0.0)) / base
    print(f"\ncascade/task end-to-end = {e2e:.3f}×, accounted = {acc:.3f}× "
          f"(target ≤ 1.15×: {'met' if e2e <= 1.15 else 'NOT met'} end-to-end, "
          f"{'met' if acc <= 1.15 else 'NOT met'} accounted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Step-time overhead of the cascade in stage B vs plain TRL GRPO with the task reward only.

Same tiny model, batch, seed and steps, in one process, one run each:
  task      rewards.carl.enabled=false (plain TRL GRPO, task reward only)
  cascade   stage B from step 1 (cascade.mode=off, warmup 0): task + CARL from the generation-logit capture
  forward   the same, CARL field from one extra no-grad forward (CARL_REWARD_FORWARD=1)
Prints mean step time (first WARMUP steps dropped) and ratios to `task`. Target: cascade/task ≤ 1.15.

    python bench/train_overhead.py [--steps 30] [--batch 32] [--gens 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WARMUP = 3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
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
    means = {}
    for name, (sets, env) in arms.items():
        res = run_arm(sets, env=env)
        times = [f["step_time"] for f in res["frames"][WARMUP:] if f.get("step_time") is not None]
        means[name] = sum(times) / len(times)
        print(f"{name:8s} {len(times):3d} steps  mean step {means[name] * 1000:8.1f} ms", flush=True)
    print()
    print("| arm | mean step (ms) | ratio to task |")
    print("|---|---|---|")
    for name, m in means.items():
        print(f"| {name} | {m * 1000:.1f} | {m / means['task']:.3f}× |")
    ok = means["cascade"] / means["task"] <= 1.15
    print(f"\ncascade/task = {means['cascade'] / means['task']:.3f}× (target ≤ 1.15×: {'met' if ok else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

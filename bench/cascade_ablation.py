"""Three arms on the demo task, a few seeds each: does ungated CARL collapse onto length, does the cascade help?

  task      task reward only (rewards.carl.enabled=false)
  ungated   task + CARL from step 1 (cascade.mode=off, no warm-up)
  cascade   task + CARL behind the default self-calibrating metric gate
Reports final held-out greedy accuracy (before → after), policy entropy (mean of the last 5 frames),
completion length (held-out greedy, and sampled in the last 5 frames) and the gate step, as a table.

    python bench/cascade_ablation.py [--seeds 0 1 2] [--steps 60] [--batch 32] [--gens 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--gens", type=int, default=8)
    args = ap.parse_args()
    from bench._arms import run_arm, setup_home

    setup_home()
    arms = {"task": ["rewards.carl.enabled=false"],
            "ungated": ['cascade.mode="off"', "cascade.warmup_steps=0"],
            "cascade": []}
    rows = []
    for seed in args.seeds:
        for name, sets in arms.items():
            common = [f"grpo.max_steps={args.steps}", f"grpo.batch_size={args.batch}",
                      f"grpo.num_generations={args.gens}", f"grpo.seed={seed}", "grpo.save_steps=100000"]
            res = run_arm(common + sets)
            ev = res["meta"].get("eval") or {}
            last = res["frames"][-5:]
            gate = next((e["step"] for e in res["events"] if e.get("name") == "gate_open"), None)
            rows.append({"arm": name, "seed": seed, "before": ev.get("before", {}).get("task_metric"),
                         "after": ev.get("after", {}).get("task_metric"),
                         "entropy": sum(f.get("entropy") or 0 for f in last) / max(1, len(last)),
                         "len_sampled": sum(f.get("completion_length") or 0 for f in last) / max(1, len(last)),
                         "len_greedy": ev.get("after", {}).get("completion_length"), "gate": gate})
            r = rows[-1]
            print(f"{name:8s} seed {seed}: acc {r['before']:.3f} → {r['after']:.3f}  entropy {r['entropy']:.3f}  "
                  f"len {r['len_sampled']:.2f}  gate {gate}", flush=True)
    print()
    print("| arm | seed | held-out acc before | after | entropy (last 5) | sampled len | greedy len | gate step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['arm']} | {r['seed']} | {r['before']:.3f} | {r['after']:.3f} | {r['entropy']:.3f} | "
              f"{r['len_sampled']:.2f} | {r['len_greedy']:.2f} | {r['gate'] if r['gate'] is not None else '–'} |")
    print("\nmean after-accuracy per arm: " + ", ".join(
        f"{a} {sum(r['after'] for r in rows if r['arm'] == a) / len(args.seeds):.3f}" for a in arms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

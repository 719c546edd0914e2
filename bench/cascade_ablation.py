"""Does CARL help or take over? Three starts × four arms × seeds on the demo task (issue 9).

Starts (the demo's own warm start, see engine/trainer/tiny.py):
  warm       the demo model (warm start to 35% validation accuracy)
  sparse     warm start stopped at 3% validation accuracy (CARL_TINY_SFT_TARGET=0.03)
  untrained  no warm start (CARL_TINY_SFT_STEPS=0)
Arms:
  task        task reward only (rewards.carl.enabled=false)
  ungated     task + CARL from step 1, added (cascade.mode=off, combine=add)
  percentile  task + CARL behind the upstream-style percentile gate, added (mode=percentile, combine=add)
  evidence    the new cascade: Wilson evidence gate + CARL only in groups with task variance, capped
              (mode=evidence, combine=varied_groups)
  varied      (diagnostic, only with --arms varied) the combination alone, ungated
Reports held-out greedy accuracy (before → after), distinct completions per group of G and overall (fraction of the
batch), policy entropy and sampled completion length (means of the last 10 frames), greedy completion length, and
the gate step. Prints a markdown table and per-start means.

    python bench/cascade_ablation.py [--seeds 0 1 2] [--steps 200] [--starts warm sparse untrained]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STARTS = {"warm": {}, "sparse": {"CARL_TINY_SFT_TARGET": "0.03"}, "untrained": {"CARL_TINY_SFT_STEPS": "0"}}
ARMS = {
    "task": ["rewards.carl.enabled=false"],
    "ungated": ['cascade.mode="off"', "cascade.warmup_steps=0", "cascade.combine=add"],
    "percentile": ["cascade.mode=percentile", "cascade.combine=add"],
    "evidence": ["cascade.mode=evidence", "cascade.combine=varied_groups"],
    # diagnostic: the combination alone, ungated (not run by default; --arms varied)
    "varied": ['cascade.mode="off"', "cascade.warmup_steps=0", "cascade.combine=varied_groups"],
}
DEFAULT_ARMS = ["task", "ungated", "percentile", "evidence"]
LAST = 10


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--starts", nargs="+", default=list(STARTS), choices=list(STARTS))
    ap.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    args = ap.parse_args()
    import os

    from bench._arms import run_arm, setup_home
    from engine.trainer.tiny import ensure_tiny, info

    setup_home()
    t0 = time.time()
    rows = []
    for start in args.starts:
        env = STARTS[start]
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        built = info(ensure_tiny())
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        print(f"start {start}: {built['sft_steps']} warm-start steps, held-out {built['heldout_accuracy']:.3f}",
              flush=True)
        for seed in args.seeds:
            for arm in args.arms:
                common = [f"grpo.max_steps={args.steps}", f"grpo.seed={seed}", "grpo.save_steps=100000"]
                res = run_arm(common + ARMS[arm], env=env)
                ev = res["meta"].get("eval") or {}
                last = res["frames"][-LAST:]
                ex = [f.get("extra") or {} for f in last]
                gate = next((e["step"] for e in res["events"] if e.get("name") == "gate_open"), None)
                r = {"start": start, "arm": arm, "seed": seed, "status": res["status"],
                     "before": ev.get("before", {}).get("task_metric"), "after": ev.get("after", {}).get("task_metric"),
                     "distinct_group": _mean([e.get("completions/distinct_per_group") for e in ex]),
                     "distinct": _mean([e.get("completions/distinct") for e in ex]),
                     "entropy": _mean([f.get("entropy") for f in last]),
                     "entropy_first": _mean([f.get("entropy") for f in res["frames"][:LAST]]),
                     "len_sampled": _mean([f.get("completion_length") for f in last]),
                     "len_greedy": ev.get("after", {}).get("completion_length"), "gate": gate}
                rows.append(r)
                print(f"{start:9s} {arm:10s} seed {seed}: acc {r['before']:.3f} → {r['after']:.3f}  distinct/group "
                      f"{r['distinct_group']:.2f}  distinct {r['distinct']:.2f}  entropy {r['entropy_first']:.2f}→"
                      f"{r['entropy']:.2f}  len {r['len_sampled']:.2f}  gate {gate}  [{time.time() - t0:.0f}s]",
                      flush=True)
    print(f"\n{args.steps} GRPO steps per run, seeds {args.seeds}; distinct/entropy/len: mean of the last {LAST} frames")
    print("\n| start | arm | seed | acc before | acc after | distinct / group | distinct overall | entropy first→last "
          "| sampled len | greedy len | gate step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['start']} | {r['arm']} | {r['seed']} | {r['before']:.3f} | {r['after']:.3f} | "
              f"{r['distinct_group']:.2f} | {r['distinct']:.2f} | {r['entropy_first']:.2f}→{r['entropy']:.2f} | "
              f"{r['len_sampled']:.2f} | {r['len_greedy']:.2f} | {r['gate'] if r['gate'] is not None else '–'} |")
    print("\n| start | arm | mean acc after | min | max | mean distinct / group | mean entropy last |")
    print("|---|---|---|---|---|---|---|")
    for start in args.starts:
        for arm in args.arms:
            sel = [r for r in rows if r["start"] == start and r["arm"] == arm]
            if not sel:
                continue
            accs = [r["after"] for r in sel]
            print(f"| {start} | {arm} | {_mean(accs):.3f} | {min(accs):.3f} | {max(accs):.3f} | "
                  f"{_mean([r['distinct_group'] for r in sel]):.2f} | {_mean([r['entropy'] for r in sel]):.2f} |")
    print(f"\ntotal {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

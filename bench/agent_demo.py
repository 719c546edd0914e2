"""The agent demo, reproduced: held-out task completion, tool format and tool calls per task before and after GRPO.

In a fresh CARL_HOME (a temporary directory unless ``--home``): ``carl --batch project init --preset
agent-sql-cpu``, then for each seed ``carl --batch train --set grpo.seed=S`` (the first run builds the demo model
into $CARL_HOME/cache, once). The numbers are the worker's own before/after evaluation on the held-out tasks
(engine/envs/demo.py: greedy rollouts through the tool loop, scored by sql_result), read from each run's
meta.json. ``--dev`` also scores the initial and each final model on the dev slice (tasks disjoint from both the
training and held-out ones; what settings were chosen on), so no choice needs the held-out numbers.

    python bench/agent_demo.py [--seeds 0 1 2] [--steps N] [--dev] [--home DIR] [--set K=V …]

Prints one JSON object: per seed ``{"before": {...}, "after": {...}, "delta_task_completion"}`` and the mean
change; a rise is ``after > before`` on the same held-out tasks in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEYS = ("task_completion", "tool_format", "tool_calls_per_task")


def _carl(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carl_tui", "--batch", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)


def _dev_scores(model_dir: Path, tok_dir: Path) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.config import preset
    from engine.envs import demo
    from engine.envs.evaluate import evaluate_agent

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    ev = evaluate_agent(model, tok, demo.dev_rows(), preset("agent-sql-cpu"))
    return {k: ev[k] for k in KEYS}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=None, help="grpo.max_steps (default: the preset's)")
    ap.add_argument("--home", help="CARL_HOME to use (default: a fresh temporary one)")
    ap.add_argument("--dev", action="store_true", help="also score the dev slice before and after")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="K=V")
    args = ap.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="carl-agent-demo-"))
    env = {**os.environ, "CARL_HOME": str(home), "PYTHONPATH": str(ROOT), "TRL_EXPERIMENTAL_SILENCE": "1",
           "CARL_LEDGER_PASSPHRASE": os.environ.get("CARL_LEDGER_PASSPHRASE", "agent-demo")}
    os.environ["CARL_HOME"] = str(home)
    work = home / "project"
    work.mkdir(parents=True, exist_ok=True)
    r = _carl(["project", "init", "--preset", "agent-sql-cpu", "--force"], env, work)
    if r.returncode:
        print(r.stderr, file=sys.stderr)
        return 1
    sets = ["tracking.trackio=false", *args.sets] + ([f"grpo.max_steps={args.steps}"] if args.steps else [])
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "home": str(home),
                 "command": "python bench/agent_demo.py " + " ".join(sys.argv[1:]), "sets": sets, "seeds": {}}
    from engine.envs import demo

    for seed in args.seeds:
        t0 = time.time()
        r = _carl(["train", *sum((["--set", s] for s in sets + [f"grpo.seed={seed}"]), [])], env, work)
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        done = next((x for x in lines if x.get("type") == "done"), None)
        run_id = next((x.get("run_id") for x in lines if x.get("run_id")), None) or (done or {}).get("run_id")
        if done is None or done.get("status") != "completed" or not run_id:
            print(r.stderr[-3000:], file=sys.stderr)
            out["seeds"][seed] = {"status": (done or {}).get("status", "failed")}
            continue
        meta = json.loads((home / "runs" / run_id / "meta.json").read_text())
        ev = meta["eval"]
        row = {"run_id": run_id, "wall_s": round(time.time() - t0, 1),
               "before": {k: ev["before"].get(k) for k in KEYS}, "after": {k: ev["after"].get(k) for k in KEYS},
               "n": ev["before"].get("n")}
        row["delta_task_completion"] = row["after"]["task_completion"] - row["before"]["task_completion"]
        if args.dev:
            base = demo.cache_dir(home / "cache")
            row["dev_before"] = _dev_scores(base, base / "tokenizer")
            row["dev_after"] = _dev_scores(home / "runs" / run_id / "final", base / "tokenizer")
        out["seeds"][seed] = row
        print(json.dumps({"seed": seed, **row}), file=sys.stderr)
    deltas = [v["delta_task_completion"] for v in out["seeds"].values() if "delta_task_completion" in v]
    if deltas:
        out["mean_delta_task_completion"] = statistics.fmean(deltas)
        out["rose_in"] = f"{sum(d > 0 for d in deltas)}/{len(deltas)} seeds"
    info = home / "cache" / f"agent-sql-v{demo.VERSION}" / "carl_agent.json"
    if info.is_file():
        out["model"] = json.loads(info.read_text())
    print(json.dumps(out, indent=1))
    return 0 if deltas else 1


if __name__ == "__main__":
    raise SystemExit(main())

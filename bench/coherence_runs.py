"""Fresh demo runs for issue 16: collapsing and healthy arms, their frames, events, meta and final models kept.

Runs (start × arm × seed) of ``bench/cascade_ablation.py``'s starts and arms and copies each run directory's
``frames.jsonl``, ``events.jsonl``, ``meta.json`` and ``final/`` to ``OUT/<start>-<arm>-<seed>/``. The alarm
table (``bench/collapse_alarm.py``), the eval gate test's checkpoints and the best-of-N table read them.

    python bench/coherence_runs.py OUT [--seeds 0 1 2] [--steps 200] [--runs sparse:task sparse:ungated:1 ...]

(``start:arm`` runs for every seed, seed-major; ``start:arm:seed`` once, after those.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_RUNS = ["sparse:task", "sparse:ungated", "sparse:percentile", "sparse:evidence",
                "untrained:task", "untrained:ungated", "warm:task", "warm:evidence"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    args = ap.parse_args()

    from bench._arms import setup_home
    from bench.cascade_ablation import ARMS, STARTS

    setup_home()
    from engine.config import load_config
    from engine.runs import RunStore
    from engine.trainer.plan import plan
    from engine.trainer.worker import Worker

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    specs = [(s.split(":") + [str(seed)])[:3] for seed in args.seeds for s in args.runs if s.count(":") == 1]
    specs += [s.split(":") for s in args.runs if s.count(":") == 2]  # start:arm:seed runs once, in order
    for start, arm, seed_s in specs:
        seed = int(seed_s)
        name = f"{start}-{arm}-{seed}"
        if (out / name / "meta.json").is_file():
            continue
        env = STARTS[start]
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            sets = ["tracking.trackio=false", f"grpo.max_steps={args.steps}", f"grpo.seed={seed}",
                    "grpo.save_steps=100000"] + ARMS[arm]
            import tempfile

            cfg, path = load_config(None, sets, cwd=Path(tempfile.gettempdir()))
            store = RunStore()
            run_id = store.create(cfg.to_yaml(), plan(cfg, path))
            d = store.run_dir(run_id)
            status = Worker(d).run()
        finally:
            for k, v in old.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        dst = out / (name + ".tmp")
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        for f in ("frames.jsonl", "events.jsonl", "config.yaml"):
            if (d / f).is_file():
                shutil.copy2(d / f, dst / f)
        if (d / "final").is_dir():
            shutil.copytree(d / "final", dst / "final",
                            ignore=shutil.ignore_patterns("training_args.bin", "optimizer.pt", "rng_state*"))
        shutil.copy2(d / "meta.json", dst / "meta.json")
        os.replace(dst, out / name)
        shutil.rmtree(d, ignore_errors=True)
        ev = json.loads((out / name / "meta.json").read_text()).get("eval") or {}
        print(f"{name}: {status} acc {ev.get('before', {}).get('task_metric')} -> "
              f"{ev.get('after', {}).get('task_metric')} [{time.time() - t0:.0f}s]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

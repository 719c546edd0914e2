"""Peak memory of the eval gate does not grow with the eval set.

    python bench/memory.py [--small 16] [--large 256] [--new-tokens 96] [--hidden 64] [--unbounded-n 0]

Builds (once, under a temp dir) a random-init **Qwen2-architecture** model with the real 151,936-token
vocabulary (2 layers, small hidden size; engine.trainer.families) and a local JSONL dataset, then runs
``carl --batch eval`` as subprocesses (started together, one thread each) at ``--small`` and ``--large`` eval
prompts, each greedy to
``--new-tokens`` new tokens (``grpo.max_completion_length``; a random model rarely stops early), and reads each
child's peak RSS from ``os.wait4`` (``ru_maxrss``). Prints one JSON object with both peaks, their ratio and
the token counts. ``--unbounded-n N`` adds one run at N prompts with a budget large enough for all logits at
once (the shape of the old single forward) for comparison — keep N small: at 256 prompts the unbounded
forward needs tens of GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _dataset(path: Path, n: int) -> None:
    import random

    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            fh.write(json.dumps({"question": f"What is {a} plus {b}? Answer with the number.",
                                 "answer": str(a + b)}) + "\n")


def _config(path: Path, data: Path, model: Path, new_tokens: int) -> None:
    import yaml

    path.write_text(yaml.safe_dump({
        "project": {"name": "bench-memory"},
        "model": {"name_or_path": str(model), "dtype": "float32"},
        "dataset": {"source": str(data), "eval_split": "test", "prompt_field": "question", "answer_field": "answer"},
        "task": {"rewards": [{"kind": "numeric"}]},
        "grpo": {"max_completion_length": new_tokens, "max_prompt_length": 64},
        "compute": {"device": "cpu"},
        "tracking": {"trackio": False},
    }, sort_keys=False), encoding="utf-8")


def _cmd(model: Path, config: Path, n: int, sets: list[str] | None) -> list[str]:
    cmd = [sys.executable, "-m", "carl_tui.cli", "--batch", "eval", "--adapter", str(model), "--config", str(config),
           "--n", str(n)]
    for s in sets or []:
        cmd += ["--set", s]
    return cmd


def measure(work: Path, model: Path, config: Path, runs: dict[str, tuple[int, list[str]]]) -> dict[str, dict]:
    """``carl --batch eval`` children, one per entry of ``runs`` (name → (n, --set overrides)), started together:
    each child's own peak RSS (MiB, from ``os.wait4``), wall time, and the eval's own counts."""
    env = {**os.environ, "CARL_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO), "CARL_LEDGER_PASSPHRASE": "bench",
           # one thread each: on a busy machine, spinning OpenMP threads only burn CPU
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    procs = {}
    for name, (n, sets) in runs.items():
        o = open(work / f"eval-{name}.out", "wb")
        e = open(work / f"eval-{name}.err", "wb")
        procs[name] = (subprocess.Popen(_cmd(model, config, n, sets), env=env, stdout=o, stderr=e, cwd=str(work)),
                       time.perf_counter(), o, e)
    results: dict[str, dict] = {}
    for name, (proc, t0, o, e) in procs.items():
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: ru_maxrss is its peak RSS in KiB
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        o.close()
        e.close()
        if proc.returncode not in (0, 1):  # 1 = the gate failed, which a random model does
            raise SystemExit(f"eval {name} failed (exit {proc.returncode}): "
                             f"{(work / f'eval-{name}.err').read_text()[-2000:]}")
        m = json.loads((work / f"eval-{name}.out").read_text())["metrics"]
        results[name] = {"n": m["n"], "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 1),
                         "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                         "completion_length": m["completion_length"], "tokens": round(m["completion_length"] * m["n"]),
                         "phi_mean": m["phi_mean"]}
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=16)
    ap.add_argument("--large", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--unbounded-n", type=int, default=0, help="also run N prompts with an unbounded budget")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "carl-bench-memory"))
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from engine.trainer.families import FAMILIES, build_tiny

    model = build_tiny("qwen2", work / f"qwen2-h{args.hidden}", hidden=args.hidden, layers=2)
    data = work / "data.jsonl"
    _dataset(data, max(args.small, args.large, args.unbounded_n))
    config = work / "carl.yaml"
    _config(config, data, model, args.new_tokens)
    if args.large < args.small:
        raise SystemExit("--large must be at least --small")
    runs = {"small": (args.small, []), "large": (args.large, [])}
    if args.unbounded_n:
        runs["unbounded"] = (args.unbounded_n, ["compute.logits_budget_mb=1000000"])
    res = measure(work, model, config, runs)  # started together: each child's own peak, however they overlap
    small, large = res["small"], res["large"]
    out = {"bench": "memory", "model": "qwen2 (random init)", "vocab_size": FAMILIES["qwen2"].vocab_size,
           "hidden": args.hidden, "layers": 2, "new_tokens": args.new_tokens, "small": small, "large": large,
           "ratio": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3)}
    if args.unbounded_n:
        out["unbounded"] = res["unbounded"]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

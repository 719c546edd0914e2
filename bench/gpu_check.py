"""One short check on one CUDA GPU (≤ 5 minutes): the numbers a first real run depends on.

    python bench/gpu_check.py [--work DIR] [--steps 10] [--eval-n 64] [--eval-tokens 512] [--json]

1. **probe**: the probe's torch kernel on CUDA against the numpy CPU path on the same random logits
   ([8, 512, 151,936], float32): largest |Δ| of phi / entropy / selected_prob, and each path's median time.
2. **grpo**: ``--steps`` LoRA GRPO steps in bf16 (the worker, in process) on a random-init model of
   Qwen2.5-0.5B's shape (24 layers, hidden 896, vocab 151,936; engine.trainer.families) with a local JSONL
   dataset: seconds per step and peak GPU memory.
3. **eval gate**: the eval gate (greedy generation + the memory-bounded field) at ``--eval-n`` prompts ×
   ``--eval-tokens`` new tokens: peak GPU memory above the weights, the logits budget in force, and what the
   old single forward's float32 logits alone would have needed (n × tokens × V × 4 bytes).

Prints one table (``--json``: one JSON object). Without CUDA it refuses: exit 2 and one line saying so — the
numbers are never made up on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
VOCAB = 151_936


def _cuda():
    try:
        import torch
    except ImportError:
        return None, "torch is not importable"
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only torch build"
        return None, f"no CUDA device visible ({build})"
    return torch, None


def probe_check(torch, reps: int = 5) -> dict:
    import numpy as np

    from engine.probe import token_stats

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((8, 512, VOCAB), dtype=np.float32) * 3.0)
    tokens = rng.integers(0, VOCAB, size=(8, 512))

    def timed(fn):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, statistics.median(times)

    (phi_c, ent_c, sel_c, _), t_cpu = timed(lambda: token_stats(logits, tokens))
    lg, tk = torch.from_numpy(logits).cuda(), torch.from_numpy(tokens).cuda()

    def gpu():
        out = token_stats(lg, tk)
        torch.cuda.synchronize()
        return out

    gpu()  # warm-up (kernels, allocator)
    (phi_g, ent_g, sel_g, _), t_gpu = timed(gpu)
    diff = {k: float(np.abs(a.double().cpu().numpy() - b).max())
            for k, a, b in (("phi", phi_g, phi_c), ("entropy", ent_g, ent_c), ("selected_prob", sel_g, sel_c))}
    del lg, tk
    torch.cuda.empty_cache()
    return {"shape": [8, 512, VOCAB], "max_abs_diff": diff, "cpu_s": round(t_cpu, 4), "cuda_s": round(t_gpu, 4),
            "speedup": round(t_cpu / t_gpu, 1) if t_gpu > 0 else None}


def _dataset(path: Path, n: int) -> None:
    import random

    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            fh.write(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n")


def _config(model: Path, data: Path, **over):
    from engine.config import validate_dict

    base = {
        "project": {"name": "gpu-check"},
        "model": {"name_or_path": str(model), "dtype": "bfloat16"},
        "dataset": {"source": str(data), "eval_fraction": 0.2},
        "task": {"rewards": [{"kind": "numeric"}]},
        "grpo": {"max_steps": 10, "batch_size": 16, "num_generations": 8, "max_completion_length": 64,
                 "learning_rate": 1e-5, "save_steps": 1000, "logging_steps": 1},
        "lora": {"enabled": True, "r": 16, "alpha": 32},
        "cascade": {"mode": "off"},
        "compute": {"device": "cuda"},
        "eval": {"n_samples": 8},
        "tracking": {"trackio": False},
    }
    for section, fields in over.items():
        base.setdefault(section, {}).update(fields)
    return validate_dict(base, source="gpu_check")


def grpo_check(torch, model: Path, data: Path, steps: int) -> dict:
    from engine.runs import RunStore
    from engine.trainer.plan import plan
    from engine.trainer.worker import Worker

    cfg = _config(model, data, grpo={"max_steps": steps})
    store = RunStore()
    run_id = store.create(cfg.to_yaml(), plan(cfg, None))
    d = store.run_dir(run_id)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    status = Worker(d).run()
    wall = time.perf_counter() - t0
    frames = [json.loads(x) for x in (d / "frames.jsonl").read_text().splitlines()]
    step_times = [f.get("step_time") for f in frames if isinstance(f.get("step_time"), (int, float))]
    return {"status": status, "steps": len(frames), "wall_s": round(wall, 1),
            "s_per_step": round(statistics.median(step_times), 3) if step_times else None,
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "phi_last": frames[-1]["phi"] if frames else None}


def eval_check(torch, model: Path, data: Path, n: int, tokens: int) -> dict:
    from engine import memory
    from engine.trainer.data import load_rows
    from engine.trainer.evalgate import evaluate
    from engine.trainer.grpo import load_model_and_tokenizer

    cfg = _config(model, data, grpo={"max_completion_length": tokens}, lora={"enabled": False},
                  dataset={"eval_split": "test"})
    lm, tok = load_model_and_tokenizer(cfg, "cuda")
    lm.to("cuda")
    _, rows = load_rows(cfg)
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    m = evaluate(lm, tok, rows, cfg, n=n)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - weights
    return {"n": m["n"], "completion_length": m["completion_length"], "wall_s": round(wall, 1),
            "peak_above_weights_gib": round(peak / 2**30, 2),
            "logits_budget_mb": memory.budget_from(cfg, "cuda"),
            "unbounded_logits_gib": round(n * tokens * VOCAB * 4 / 2**30, 1), "phi_mean": m["phi_mean"]}


def table(res: dict) -> str:
    p, g, e = res["probe"], res["grpo"], res["eval"]
    rows = [
        ("device", res["device"], ""),
        ("probe CUDA vs CPU", f"max |Δphi| {p['max_abs_diff']['phi']:.1e}, |Δentropy| "
                              f"{p['max_abs_diff']['entropy']:.1e}, |Δsel| {p['max_abs_diff']['selected_prob']:.1e}",
         f"[8, 512, {VOCAB}]"),
        ("probe speed", f"CPU {p['cpu_s']} s, CUDA {p['cuda_s']} s ({p['speedup']}x)", "median of 5"),
        ("LoRA GRPO bf16", f"{g['steps']} steps {g['status']}, {g['s_per_step']} s/step, peak {g['peak_gpu_gib']} GiB",
         "Qwen2.5-0.5B shape, random init"),
        ("eval gate memory", f"peak {e['peak_above_weights_gib']} GiB above weights (budget "
                             f"{e['logits_budget_mb']} MB); unbounded logits alone {e['unbounded_logits_gib']} GiB",
         f"n={e['n']} x {e['completion_length']:.0f} tokens, {e['wall_s']} s"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "carl-gpu-check"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eval-n", type=int, default=64)
    ap.add_argument("--eval-tokens", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch, why = _cuda()
    if torch is None:
        print(json.dumps({"bench": "gpu_check", "ran": False, "reason": why,
                          "hint": "run it on a machine with a CUDA GPU; nothing was measured"}))
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CARL_HOME", str(work / "home"))
    os.environ.setdefault("CARL_LEDGER_PASSPHRASE", "gpu-check")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from engine.trainer.families import build_tiny

    t0 = time.perf_counter()
    model = build_tiny("qwen2", work / "qwen2.5-0.5b-shape", shape="qwen2.5-0.5b", dtype=torch.bfloat16)
    data = work / "data.jsonl"
    _dataset(data, max(200, args.eval_n))
    res = {"bench": "gpu_check", "ran": True, "device": torch.cuda.get_device_name(0),
           "date": time.strftime("%Y-%m-%d", time.gmtime())}
    res["probe"] = probe_check(torch)
    res["grpo"] = grpo_check(torch, model, data, args.steps)
    res["eval"] = eval_check(torch, model, data, args.eval_n, args.eval_tokens)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res, indent=1) if args.json else table(res) + f"\n(total {res['total_s']} s, {res['date']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

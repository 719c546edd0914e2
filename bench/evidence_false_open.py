"""How often does the evidence gate open when the true success rate is at or below its floor? (issue 21)

The gate (engine.cascade.EvidenceGate) pools Σ successes / Σ completions over a window and re-tests a Wilson
lower bound every step. Two things make that a heuristic, not a test with a known error rate: the G completions
of one prompt are not independent (a prompt the policy can do is solved by most of its G samples), and the bound
is looked at again every step. This bench measures the false-open rate directly: the REAL gate class, fed
binomial draws at a known per-prompt success rate, over many simulated runs of ``--steps`` steps.

Per-prompt rates come from either
  --model sparse   the demo's sparse start (CARL_TINY_SFT_TARGET=0.03): G samples at temperature 1 for each
                   training prompt give each prompt's empirical success rate; the simulation then draws prompts
                   from that list (the policy held at the sparse start), or
  --rates 0.03 0.1 a Beta distribution of per-prompt rates with that mean and concentration ``--kappa``
                   (kappa=inf: every prompt has the same rate, completions independent).

    python bench/evidence_false_open.py [--rates 0.03 0.05 0.08 0.1] [--kappa 1 10 inf] [--model sparse]
                                        [--prompts 600] [--runs 2000] [--steps 200]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def beta_rates(mean: float, kappa: float):
    """A sampler of per-prompt success rates with the given mean; kappa = a + b (inf: all equal to mean)."""
    if math.isinf(kappa):
        return lambda rng, n: np.full(n, mean)
    a, b = mean * kappa, (1 - mean) * kappa
    return lambda rng, n: rng.beta(a, b, n)


def empirical_rates(per_prompt: list[float]):
    arr = np.asarray(per_prompt, dtype=np.float64)
    return lambda rng, n: arr[rng.integers(0, len(arr), n)]


def false_open(rates, *, runs: int, steps: int, prompts: int = 4, group: int = 8, seed: int = 0,
               floor: float = 0.1, window: int = 10, consecutive: int = 3, z: float = 1.96) -> dict:
    """Fraction of ``runs`` simulated runs (each ``steps`` steps of ``prompts`` × ``group`` completions) in
    which the real EvidenceGate opens, and the median step it opens at."""
    from engine.cascade import EvidenceGate

    rng = np.random.default_rng(seed)
    opened: list[int] = []
    true_rate = []
    for _ in range(runs):
        gate = EvidenceGate("exact", floor=floor, window=window, consecutive=consecutive, z=z)
        for step in range(1, steps + 1):
            q = rates(rng, prompts)
            true_rate.append(float(q.mean()))
            succ = rng.binomial(group, q).sum()
            n = prompts * group
            if gate.observe(step, {"exact": succ / n, "n": float(n)}):
                opened.append(step)
                break
    return {"runs": runs, "steps": steps, "opened": len(opened), "false_open_rate": len(opened) / runs,
            "median_open_step": float(np.median(opened)) if opened else None,
            "mean_true_rate": float(np.mean(true_rate))}


def sparse_start_rates(group: int = 8, seed: int = 0, prompts: int = 600, log=print) -> tuple[list[float], dict]:
    """The success rate of each of ``prompts`` training prompts (a seeded random subset) over ``group``
    temperature-1 samples of the sparse-start model."""
    import os

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.trainer.tiny import ensure_tiny, info, prompt_of, split_pairs

    os.environ.setdefault("CARL_TINY_SFT_TARGET", "0.03")
    path = ensure_tiny(log=log)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    import random

    pairs, _ = split_pairs()
    pairs = random.Random(seed).sample(pairs, min(prompts, len(pairs)))
    torch.manual_seed(seed)
    rates: list[float] = []
    for i in range(0, len(pairs), 64):
        chunk = pairs[i: i + 64]
        enc = tok([prompt_of(a, b) for a, b in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 num_return_sequences=group, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for j, (a, b) in enumerate(chunk):
            got = texts[j * group: (j + 1) * group]
            rates.append(sum(t.strip() == str(a + b) for t in got) / group)
    return rates, info(path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", type=float, nargs="*", default=[0.03, 0.05, 0.08, 0.10])
    ap.add_argument("--kappa", type=float, nargs="*", default=[1.0, 10.0, math.inf])
    ap.add_argument("--model", choices=["sparse"], default=None)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=600, help="--model sparse: training prompts sampled")
    args = ap.parse_args()
    print("| per-prompt rates | mean true rate | runs | opened | false-open rate | median open step |")
    print("|---|---|---|---|---|---|")

    def row(label, res):
        med = "–" if res["median_open_step"] is None else f"{res['median_open_step']:.0f}"
        print(f"| {label} | {res['mean_true_rate']:.3f} | {res['runs']} | {res['opened']} | "
              f"{res['false_open_rate']:.3f} | {med} |", flush=True)

    if args.model == "sparse":
        rates, meta = sparse_start_rates(prompts=args.prompts, log=lambda m: print(m, file=sys.stderr))
        arr = np.asarray(rates)
        print(f"<!-- sparse start: held-out greedy {meta['heldout_accuracy']:.3f}; {len(rates)} prompts × 8 samples:"
              f" sampled success {arr.mean():.4f}, prompts with any success {np.mean(arr > 0):.3f},"
              f" share of successes from prompts solved ≥ 4/8 "
              f"{arr[arr >= 0.5].sum() / max(arr.sum(), 1e-12):.3f} -->")
        row("sparse start, empirical", false_open(empirical_rates(rates), runs=args.runs, steps=args.steps))
        for scale in (2.0, 3.0):  # the same spread of rates, scaled up towards and past the floor
            scaled = list(np.minimum(1.0, arr * scale))
            row(f"sparse start × {scale:g}", false_open(empirical_rates(scaled), runs=args.runs, steps=args.steps))
    for kappa in args.kappa:
        for p in args.rates:
            row(f"Beta(mean {p:g}, κ {kappa:g})", false_open(beta_rates(p, kappa), runs=args.runs, steps=args.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Best-of-N selection on the demo's held-out pairs (issues 16 and 27; the table in docs/coherence.md).

For each model: greedy accuracy, then for each N and seed, N completions per prompt sampled at temperature 1
(one batched ``generate``), each token's field read by the probe's kernel on the raw logits of its step, each
candidate scored once (engine.bestof.score_candidates) and every selection applied to the same candidates:
self_certainty, borda (p 0.5), deepconf (eta 0.1 = DeepConf-low) and deepconf_high (eta 0.9), phi, carl,
logprob, majority, random (a seeded draw). Accuracy = exact match of the selected completion (the demo task's own
check, ``text.strip() == answer``) on the 200 never-trained pairs; ``oracle`` = any of the N is right (the
ceiling of any selection). Mean ± half-range over the seeds.

    python bench/bestof.py MODEL_DIR [MODEL_DIR …] [--n 4 8 16] [--seeds 0 1 2] [--json OUT.json]

MODEL_DIR ``demo`` is the demo's warm start as built today (engine/trainer/tiny.py, cached in $CARL_TINY_CACHE or
$CARL_HOME/cache). A MODEL_DIR may be a run's ``final/`` directory (then its tokenizer is read from there, as saved by the worker).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLUMNS = ("self_certainty", "borda", "deepconf", "deepconf_high", "phi", "carl", "logprob", "majority", "random")


def _pick(cands, col: str, seed: int) -> int:
    from engine.bestof import choose

    if col == "deepconf_high":
        return choose(cands, "deepconf", eta=0.9)
    return choose(cands, col, seed=seed)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prompts", type=int, default=200, help="held-out pairs used (default all 200)")
    ap.add_argument("--json", metavar="OUT", help="also write every cell (per seed) as JSON")
    args = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.bestof import candidates_of, sample_batch, score_candidates
    from engine.trainer.evalgate import greedy_completions
    from engine.trainer.tiny import rows, split_pairs

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    held = rows(split_pairs()[1])[: args.prompts]
    prompts = [r["prompt"] for r in held]
    answers = [r["answer"] for r in held]
    t0 = time.time()
    record = {"command": " ".join(["python", "bench/bestof.py", *sys.argv[1:]]), "models": []}
    print("| model | N | greedy | " + " | ".join(COLUMNS) + " | oracle |")
    print("|---|---|---|" + "---|" * (len(COLUMNS) + 1))
    for mdir in args.models:
        if mdir == "demo":  # the demo's warm start as engine/trainer/tiny.py builds it today (cached)
            from engine.trainer.tiny import ensure_tiny

            mdir = str(ensure_tiny(log=lambda m: print(m, file=sys.stderr)))
        model = AutoModelForCausalLM.from_pretrained(mdir).eval()
        tok = AutoTokenizer.from_pretrained(mdir)
        tok.padding_side = "left"
        g_texts, _, _ = greedy_completions(model, tok, prompts, 8)
        greedy = sum(t.strip() == a for t, a in zip(g_texts, answers)) / len(answers)
        info = {}
        meta = Path(mdir) / "carl_tiny.json"
        if meta.is_file():
            info = json.loads(meta.read_text())
        entry = {"model": str(mdir), "build": info, "greedy": greedy, "cells": []}
        for n in args.n:
            acc = {s: [] for s in COLUMNS + ("oracle",)}
            for seed in args.seeds:
                batch = sample_batch(model, tok, prompts, n, 8, seed)
                right = {s: 0 for s in acc}
                for p, samples in enumerate(batch):
                    cands = candidates_of(samples)  # the demo's answer: the whole text (whitespace-normalised)
                    score_candidates(cands)
                    for s in COLUMNS:
                        k = _pick(cands, s, seed * 100003 + p)
                        right[s] += cands[k].text.strip() == answers[p]
                    right["oracle"] += any(c.text.strip() == answers[p] for c in cands)
                for s in acc:
                    acc[s].append(right[s] / len(prompts))
            entry["cells"].append({"n": n, "seeds": args.seeds, "accuracy": acc})
            cells = [f"{sum(v) / len(v):.3f} ± {(max(v) - min(v)) / 2:.3f}" for v in
                     (acc[s] for s in COLUMNS + ("oracle",))]
            print(f"| {Path(mdir).name} | {n} | {greedy:.3f} | " + " | ".join(cells) + " |", flush=True)
        record["models"].append(entry)
    print(f"\nseeds {args.seeds}; mean ± half-range over seeds; {len(prompts)} prompts; {time.time() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

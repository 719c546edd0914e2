"""Best-of-N selection on the demo's held-out pairs (issue 16; the table in docs/coherence.md).

For each model: greedy accuracy, then for each N and seed, N completions per prompt sampled at temperature 1
(one batched ``generate``), each scored by engine.bestof (phi, carl, logprob, majority; random is a seeded
draw); accuracy = exact match of the selected completion on the 200 never-trained pairs. ``oracle`` = any of the
N is right (the ceiling of any selection).

    python bench/bestof.py MODEL_DIR [MODEL_DIR …] [--n 4 8] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--n", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.bestof import SELECTIONS, Candidate, choose, sample_batch, score_candidates
    from engine.trainer.evalgate import greedy_completions
    from engine.trainer.tiny import rows, split_pairs

    held = rows(split_pairs()[1])
    prompts = [r["prompt"] for r in held]
    answers = [r["answer"] for r in held]
    t0 = time.time()
    print("| model | N | greedy | " + " | ".join(SELECTIONS) + " | oracle |")
    print("|---|---|---|" + "---|" * (len(SELECTIONS) + 1))
    for mdir in args.models:
        model = AutoModelForCausalLM.from_pretrained(mdir).eval()
        tok = AutoTokenizer.from_pretrained(mdir)
        tok.padding_side = "left"
        g_texts, _, _ = greedy_completions(model, tok, prompts, 8)
        greedy = sum(t.strip() == a for t, a in zip(g_texts, answers)) / len(answers)
        for n in args.n:
            acc = {s: [] for s in SELECTIONS + ("oracle",)}
            for seed in args.seeds:
                texts, phis, sels = sample_batch(model, tok, prompts, n, 8, seed)
                right = {s: 0 for s in acc}
                for p in range(len(prompts)):
                    cands = [Candidate(i, texts[p][i], phis[p][i], sels[p][i]) for i in range(n)]
                    score_candidates(cands)
                    for s in SELECTIONS:
                        k = choose(cands, s, seed=seed * 100003 + p)
                        right[s] += cands[k].answer == answers[p]
                    right["oracle"] += any(c.answer == answers[p] for c in cands)
                for s in acc:
                    acc[s].append(right[s] / len(prompts))
            cells = [f"{sum(v) / len(v):.3f} ± {(max(v) - min(v)) / 2:.3f}" for v in
                     (acc[s] for s in SELECTIONS + ("oracle",))]
            print(f"| {Path(mdir).name} | {n} | {greedy:.3f} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nseeds {args.seeds}; mean ± half-range over seeds; {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

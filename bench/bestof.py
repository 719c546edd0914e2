"""Best-of-N selection on the demo's held-out pairs (issues 16 and 27; the table in docs/coherence.md).

For each model: greedy accuracy, then for each N and seed, N completions per prompt sampled at temperature 1
(one batched ``generate``), each token's field read by the probe's kernel on the raw logits of its step, each
candidate scored once (engine.bestof.score_candidates) and every selection applied to the same candidates:
self_certainty, borda (p 0.5), deepconf (eta 0.1 = DeepConf-low) and deepconf_high (eta 0.9), phi, carl,
logprob, majority, random (a seeded draw). Accuracy = exact match of the selected completion (the demo task's own
check, ``text.strip() == answer``) on the 200 never-trained pairs; ``oracle`` = any of the N is right (the
ceiling of any selection). Mean ± half-range over the seeds.

    python bench/bestof.py MODEL_DIR [MODEL_DIR …] [--n 4 8 16] [--seeds 0 1 2] [--json OUT.json]
    python bench/bestof.py --agent [MODEL_DIR] [--n 4 8 16] [--seeds 0 1 2] [--prompts 64]

``--agent``: the agent demo (preset agent-sql-cpu; MODEL_DIR default its warm start, built in $CARL_TINY_CACHE or
$CARL_HOME/cache): for each held-out task, max(N) rollouts sampled at temperature 1 through the same tool loop
as engine/envs/evaluate.py (each generated token's field read on its step's raw logits; tool-result tokens are
not the model's and are not scored); best-of-N for a smaller N uses the first N of them (the samples are i.i.d.,
so that is an N-sample draw). The answer voted on is what the task's own check reads: the result of the rollout's
last SQL query (``env.last_result``; none = no vote); right = ``sql_result`` on that rollout's environment. ``greedy`` = evaluate_agent's greedy rollouts.

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


def _sampled_rollout(model, tok, env, row, max_turns: int, max_new_tokens: int) -> dict:
    """engine/envs/evaluate.rollout with sampling (temperature 1) and each generated token's field."""
    import torch

    from engine.envs.evaluate import _run_call, _tools
    from engine.probe import DEEPCONF_TOPK, token_scores

    tools = _tools(env)
    prompt = list(row["prompt"]) if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
    text = tok.apply_chat_template(prompt, tools=list(tools.values()), add_generation_prompt=True, tokenize=False)
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    field = {k: [] for k in ("phi", "entropy", "selected_prob", "self_certainty", "confidence")}
    messages: list = []
    for turn in range(max_turns + 1):
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 output_logits=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        new = out.sequences[0][len(ids):]
        if len(new):
            f = token_scores(torch.stack(out.logits, dim=1)[0, : len(new)].float(), new, topk=DEEPCONF_TOPK)
            for k in field:
                field[k] += f[k].double().tolist()
        new = new.tolist()
        prefix = tok.decode(ids, skip_special_tokens=False)
        ids += new
        try:
            msg = tok.parse_response(tok.decode(new, skip_special_tokens=False), prefix=prefix)
        except Exception:
            msg = {"role": "assistant", "content": tok.decode(new, skip_special_tokens=True)}
        msg = dict(msg or {"role": "assistant", "content": ""})
        msg.setdefault("role", "assistant")
        messages.append(msg)
        calls = msg.get("tool_calls") or []
        if not calls or turn == max_turns:
            break
        results = [{"role": "tool", "name": (c.get("function") or {}).get("name", "unknown"),
                    "content": str(_run_call(tools, c))} for c in calls]
        messages += results
        before = tok.apply_chat_template(prompt + messages[:-len(results)], tools=list(tools.values()),
                                         tokenize=False)
        after = tok.apply_chat_template(prompt + messages, tools=list(tools.values()), add_generation_prompt=True,
                                        tokenize=False)
        suffix = after[len(before):] if after.startswith(before) else after
        ids += tok(suffix, add_special_tokens=False)["input_ids"]
    final = str(messages[-1].get("content") or "").strip() if messages else ""
    return {"messages": messages, "text": final, **field}


def agent_main(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.bestof import Candidate, score_candidates
    from engine.config import preset
    from engine.envs import demo
    from engine.envs.evaluate import evaluate_agent
    from engine.envs.factory import make_factory
    from engine.envs.rewards import ENV_REWARDS
    from engine.trainer.tiny import cache_root

    torch.set_num_threads(1)
    cfg = preset("agent-sql-cpu")
    root = cache_root()
    mdir = args.models[0] if args.models else str(demo.ensure(root, log=lambda m: print(m, file=sys.stderr)))
    model = AutoModelForCausalLM.from_pretrained(mdir).eval()
    tok = AutoTokenizer.from_pretrained(str(demo.cache_dir(root) / "tokenizer"))
    rows = demo.heldout_rows()[: args.prompts]
    greedy = evaluate_agent(model, tok, rows, cfg)["task_metric"]
    if getattr(tok, "response_schema", None) is None:
        try:
            from trl.chat_template_utils import add_response_schema

            add_response_schema(tok)
        except ValueError:
            pass
    factory = make_factory(cfg.environment.kind, cfg.environment.limits)
    _, score = ENV_REWARDS[cfg.environment.kind]
    nmax = max(args.n)
    acc = {n: {s: [] for s in COLUMNS + ("oracle",)} for n in args.n}
    t0 = time.time()
    for seed in args.seeds:
        torch.manual_seed(seed)
        right = {n: {s: 0 for s in COLUMNS + ("oracle",)} for n in args.n}
        for p, row in enumerate(rows):
            samples, ok = [], []
            for _ in range(nmax):
                env = factory()
                env.reset(**row)
                r = _sampled_rollout(model, tok, env, row, cfg.environment.max_tool_calls,
                                     cfg.grpo.max_completion_length)
                last = getattr(env, "last_result", None)
                r["answer"] = None if last is None else json.dumps(last, sort_keys=True, default=str)
                samples.append(r)
                ok.append(float(score([row["prompt"]], [r["messages"]], environments=[env])[0]) > 0)
            for n in args.n:
                cands = [Candidate(i, r["text"], r["phi"], r["selected_prob"], r["entropy"], r["self_certainty"],
                                   r["confidence"], answer=r["answer"])
                         for i, r in enumerate(samples[:n])]
                score_candidates(cands)
                for s in COLUMNS:
                    right[n][s] += ok[_pick(cands, s, seed * 100003 + p)]
                right[n]["oracle"] += any(ok[:n])
        for n in args.n:
            for s in acc[n]:
                acc[n][s].append(right[n][s] / len(rows))
        print(f"seed {seed} done, {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    print("| model | N | greedy | " + " | ".join(COLUMNS) + " | oracle |")
    print("|---|---|---|" + "---|" * (len(COLUMNS) + 1))
    for n in args.n:
        cells = [f"{sum(v) / len(v):.3f} ± {(max(v) - min(v)) / 2:.3f}" for v in
                 (acc[n][s] for s in COLUMNS + ("oracle",))]
        print(f"| agent-sql ({Path(mdir).name}) | {n} | {greedy:.3f} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nseeds {args.seeds}; mean ± half-range over seeds; {len(rows)} held-out tasks; {time.time() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(["python", "bench/bestof.py", *sys.argv[1:]]),
                                               "model": mdir, "greedy": greedy, "accuracy": acc}, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("--agent", action="store_true", help="the agent demo (preset agent-sql-cpu) instead")
    ap.add_argument("--n", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prompts", type=int, default=200, help="held-out pairs/tasks used (default all)")
    ap.add_argument("--json", metavar="OUT", help="also write every cell (per seed) as JSON")
    args = ap.parse_args()
    if args.agent:
        return agent_main(args)
    if not args.models:
        ap.error("give MODEL_DIR (or demo), or --agent")
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

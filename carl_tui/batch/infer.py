"""`carl --batch infer`: generate (or score a given text) with a model and report its per-token Phi field.

    carl --batch infer (--model M [--adapter A] | --run RUN [--model BASE]) (--prompt TEXT | --prompts FILE.jsonl)
                       [--score TEXT] [--add-eos] [--max-new-tokens N] [--temperature T] [--top-p P] [--greedy]
                       [--seed S] [--device D] [--dtype DT] [--config FILE] [--chat-template auto|none]
                       [--system-prompt TEXT] [--logits-budget-mb MB] [--stream]
                       [--best-of N [--select HOW] [--borda-p P] [--eta F] [--window W] [--extract HOW]]

One prompt → one JSON object; ``--prompts`` → one JSON line per prompt (each line of the file is
``{"prompt": …, "score": …?}`` or a JSON string; ``-`` reads stdin). ``--stream`` prints one
``{"type": "token", …}`` line per token as it is produced, then the result with ``"type": "result"``.
``--best-of N`` prints ``{"best_of", "select", "chosen", "candidates": [{"index", "text", "answer", "scores": {phi,
self_certainty, neg_entropy, logprob, group_confidence, carl, votes}, …}], "params", "result": <the chosen
candidate's result>}`` (docs/coherence.md).
Fields are documented in docs/infer.md. torch/transformers are imported only when the verb runs.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "infer", help="generate or score text with a model and show its per-token Phi field",
        description="Generate a completion (or teacher-force --score TEXT) with a local model, a Hub id, "
                    "builtin:tiny, a PEFT adapter, or a run's latest checkpoint, and report text, tokens and per "
                    "token phi, entropy and selected_prob, plus the sequence's CARL reward components.")
    p.add_argument("--model", metavar="M", help="a directory, RUN, RUN/checkpoint-N, RUN@N, run:ID, builtin:NAME or a "
                                                "Hub id (docs/architecture.md; with --run: the base)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--adapter", metavar="A", help="PEFT adapter directory on top of --model")
    src.add_argument("--run", metavar="RUN", help="run id or unambiguous prefix: its final model, else its "
                                                  "latest checkpoint")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", metavar="TEXT", help="one prompt")
    what.add_argument("--prompts", metavar="FILE", help="JSON Lines of {\"prompt\": …, \"score\": …?} "
                                                        "(or JSON strings); - reads stdin")
    p.add_argument("--score", metavar="TEXT", help="score TEXT after the prompt (teacher forcing) instead of "
                                                   "generating")
    p.add_argument("--add-eos", action="store_true", help="with --score: append the end-of-sequence token")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="default 64")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="default 1.0; 0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass, default 1.0")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=int, metavar="S", help="sampling seed (reproducible draws)")
    p.add_argument("--device", metavar="D", help="cpu, cuda, cuda:1, mps … (default: cuda, else mps, else cpu)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype (auto: float32 on CPU, the checkpoint's dtype on GPU)")
    p.add_argument("--config", metavar="FILE", help="carl.yaml whose CARL weights and prompt format apply (default "
                                                    "./carl.yaml; with --run: the run's own config)")
    p.add_argument("--chat-template", choices=("auto", "none"), default=None,
                   help="auto: render the prompt with the tokenizer's chat template when it has one; none: raw "
                        "text (default: dataset.chat_template of the config in force)")
    p.add_argument("--system-prompt", metavar="TEXT", default=None,
                   help="system message (default: dataset.system_prompt of the config in force)")
    p.add_argument("--logits-budget-mb", type=float, metavar="MB",
                   help="memory for logits while scoring (default: 512 on CPU, 1/8 of the GPU on CUDA)")
    p.add_argument("--stream", action="store_true", help="one JSON line per token as it is produced, then the "
                                                         "result")
    p.add_argument("--best-of", type=int, metavar="N", help="sample N candidates and keep one (--select); the "
                                                             "output lists every candidate with its scores")
    p.add_argument("--select", default="logprob",
                   choices=("self_certainty", "borda", "deepconf", "phi", "carl", "logprob", "majority", "random"),
                   help="how --best-of picks (docs/coherence.md): mean log-prob (default), self-certainty "
                        "(Kang et al.), Borda over answers ranked by self-certainty, DeepConf (filter by lowest "
                        "group confidence, then weighted vote), mean Phi, CARL reward, majority answer, random")
    p.add_argument("--borda-p", type=float, metavar="P", help="Borda power: rank r gets (N-r+1)^P votes "
                                                              "(default 0.5; 0 = majority)")
    p.add_argument("--eta", type=float, metavar="F", help="DeepConf: keep this top fraction of candidates by "
                                                          "lowest group confidence (default 0.1; 0.9 = DeepConf-high)")
    p.add_argument("--window", type=int, metavar="W", help="DeepConf group size in tokens (default 2048)")
    p.add_argument("--extract", choices=("auto", "gsm8k", "boxed", "last_number", "answer_tag"),
                   help="answer extraction for the votes (default: the task's, from the config in force)")
    p.set_defaults(func=run)


def _read_prompts(path: str) -> list[dict[str, Any]]:
    import json
    import sys
    from pathlib import Path

    from engine.errors import ValidationError

    if path == "-":
        text, name = sys.stdin.read(), "stdin"
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValidationError(f"prompts file not found: {path}", hint="Give a JSON Lines file, or - for stdin.",
                                  context={"path": path})
        try:
            text, name = p.read_text(encoding="utf-8"), p.name
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(f"cannot read prompts file {path}: {exc}", context={"path": path}) from None
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ValidationError(f"{name} line {n} is not JSON: {exc}",
                                  hint='Each line: {"prompt": "…"} (optionally "score": "…") or a JSON string.',
                                  context={"line": n}) from None
        if isinstance(obj, str):
            obj = {"prompt": obj}
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise ValidationError(f"{name} line {n} has no string \"prompt\"",
                                  hint='Each line: {"prompt": "…"} (optionally "score": "…") or a JSON string.',
                                  context={"line": n})
        if obj.get("score") is not None and not isinstance(obj["score"], str):
            raise ValidationError(f"{name} line {n}: \"score\" must be a string", context={"line": n})
        rows.append(obj)
    if not rows:
        raise ValidationError(f"{name} holds no prompts", hint="Give at least one JSON line with a prompt.")
    return rows


def run(args: argparse.Namespace) -> int:
    from carl_tui.batch._io import emit, progress
    from engine import infer
    from engine.errors import ValidationError

    if not args.model and not args.run:
        raise ValidationError("give --model or --run", hint="--model PATH|HUB_ID|builtin:tiny, or --run RUN_ID.")
    if args.add_eos and args.score is None and not args.prompts:
        raise ValidationError("--add-eos applies to --score", hint="Add --score TEXT.")
    if args.logits_budget_mb is not None and not args.logits_budget_mb > 0:
        raise ValidationError(f"--logits-budget-mb must be positive, got {args.logits_budget_mb}")
    sampling = infer.Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              greedy=bool(args.greedy), seed=args.seed).check()
    rows = _read_prompts(args.prompts) if args.prompts else [{"prompt": args.prompt, "score": args.score}]
    if args.prompts and args.score is not None:
        rows = [{**r, "score": r.get("score") if r.get("score") is not None else args.score} for r in rows]
    ref = infer.resolve(args.model, adapter=args.adapter, run=args.run, log=progress)
    st = infer.settings_for(ref, config_path=args.config)
    from dataclasses import replace

    fmt = st.prompt_format()
    if args.chat_template is not None:
        fmt = replace(fmt, chat_template=args.chat_template)
    if args.system_prompt is not None:
        fmt = replace(fmt, system_prompt=args.system_prompt or None)
    lm = infer.load(ref, device=args.device, dtype=args.dtype, log=progress)
    many = bool(args.prompts)
    if args.best_of is not None:
        if args.stream or any(r.get("score") is not None for r in rows):
            raise ValidationError("--best-of does not combine with --stream or --score",
                                  hint="Drop --stream / --score for best-of-N.")
        for i, row in enumerate(rows):
            out = infer.best_of(lm, row["prompt"], args.best_of, args.select, sampling, weights=st.weights,
                                 fmt=fmt, extract=args.extract or st.extract, p=args.borda_p, eta=args.eta,
                                 window=args.window)
            emit({"type": "result", "index": i, **out} if many else out)
        return 0
    for i, row in enumerate(rows):
        if row.get("score") is not None:
            result = lm.score(row["prompt"], row["score"], add_eos=bool(args.add_eos), fmt=fmt, weights=st.weights,
                              budget_mb=args.logits_budget_mb)
            if args.stream:
                for step in result.steps:
                    emit(_token_line(step, i, many))
        else:
            gen = lm.stream(row["prompt"], sampling, fmt=fmt, weights=st.weights)
            if args.stream:
                for step in gen:
                    emit(_token_line(step, i, many))
            result = gen.run() if gen.result is None else gen.result
        out = {**result.to_dict(), "settings_from": st.source}
        if args.stream or many:
            out = {"type": "result", **({"index": i} if many else {}), **out}
        emit(out)
        if many:
            progress(f"infer: {i + 1}/{len(rows)} · {len(result.token_ids)} tokens · {result.finish_reason}")
    return 0


def _token_line(step: Any, i: int, many: bool) -> dict[str, Any]:
    return {"type": "token", **({"prompt_index": i} if many else {}), **step.as_dict()}

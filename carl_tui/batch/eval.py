"""`carl --batch eval --run RUN | --adapter PATH [--threshold X] [--push [--repo ID]]`

The eval gate (engine.trainer.evalgate): pass iff task metric ≥ threshold AND phi_mean ≥ SIGMA AND the collapse
checks pass (distinct answers, top-answer share, Phi spread: engine.trainer.evalchecks) on held-out prompts;
fails closed when coherence data is missing. Exit 0 on pass."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from carl_tui.batch._io import emit, progress


def register(sub: Any) -> None:
    p = sub.add_parser("eval", help="the eval gate on a run or an adapter (exit 0 on pass, 1 on fail)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run id or prefix (uses its final/ model, else its last checkpoint)")
    src.add_argument("--adapter", help="a model or LoRA adapter directory")
    p.add_argument("--config", help="carl.yaml for --adapter (default ./carl.yaml, else the demo)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE")
    p.add_argument("--threshold", type=float, help="task metric needed (default eval.threshold)")
    p.add_argument("--n", type=int, help="held-out prompts to use (default eval.n_samples; the demo uses all 200)")
    p.add_argument("--push", action="store_true", help="after a pass, push the model to the Hub (HF_ENDPOINT respected)")
    p.add_argument("--repo", help="Hub repo id for --push (default eval.push_to)")
    p.add_argument("--best-of", type=int, metavar="N", help="also report the task metric of best-of-N sampled "
                                                             "completions (the gate itself stays on greedy)")
    p.add_argument("--select", default="logprob", choices=("phi", "carl", "logprob", "majority", "random"),
                   help="how --best-of picks (default logprob; docs/coherence.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from engine.config import load_config, validate_dict
    from engine.errors import ConfigError, ValidationError
    from engine.runs import RunStore, last_checkpoint, ledger_record

    subject: dict[str, Any]
    before = None  # the starting model's task metric (a run's meta), for eval.min_gain
    if args.run:
        store = RunStore()
        run_id = store.resolve(args.run)
        d = store.run_dir(run_id)
        cfg = validate_dict(yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")), source=str(d))
        if args.sets:
            from engine.config import apply_overrides

            cfg = validate_dict(apply_overrides(cfg.model_dump(mode="json"), args.sets), source=str(d))
        path = d / "final"
        if not path.is_dir():
            ck = last_checkpoint(d)
            if ck is None:
                raise ValidationError(f"run {run_id} has no model yet (no final/ and no checkpoint)",
                                      hint="Wait for a checkpoint or the end of the run.", context={"run": run_id})
            path = ck[1]
        subject = {"run_id": run_id, "model_path": str(path)}
        before = ((json.loads((d / "meta.json").read_text(encoding="utf-8")).get("eval") or {}).get("before")
                  or {}).get("task_metric") if (d / "meta.json").is_file() else None
    else:
        cfg, _ = load_config(args.config, args.sets)
        path = Path(args.adapter).expanduser()
        if not path.is_dir():
            raise ValidationError(f"adapter directory not found: {path}", context={"adapter": str(path)})
        subject = {"adapter": str(path)}
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ValidationError(f"--threshold must be in [0, 1], got {args.threshold}")
    repo = args.repo or cfg.eval.push_to
    if args.push and not repo:
        raise ConfigError("--push needs a repo id", hint="Pass --repo OWNER/NAME or set eval.push_to.")
    if args.push:
        from huggingface_hub import get_token

        from engine.errors import CredentialError

        if not get_token():  # say so before spending time on the eval
            raise CredentialError("pushing to the Hub needs a Hugging Face token",
                                  hint="Set HF_TOKEN (or run `hf auth login`); carl never stores it.",
                                  context={"repo_id": repo})

    from engine.trainer.data import load_rows
    from engine.trainer.evalgate import decide, evaluate, load_for_eval, push

    progress(f"carl: evaluating {path}")
    model, tok = load_for_eval(path, cfg)
    _, rows = load_rows(cfg)
    n = args.n or (len(rows) if cfg.dataset.source == "builtin:addition" else cfg.eval.n_samples)
    metrics = evaluate(model, tok, rows, cfg, n=n)
    if args.best_of is not None:
        metrics["best_of"] = _best_of(model, tok, rows[:n], cfg, args.best_of, args.select)
    threshold = cfg.eval.threshold if args.threshold is None else args.threshold
    passed, reason = decide(metrics, cfg.eval, threshold, before=before)
    out: dict[str, Any] = {"pass": passed, "metrics": metrics, "threshold": threshold, "reason": reason,
                           "gate": {"phi_min": cfg.eval.phi_min, "min_distinct": cfg.eval.min_distinct,
                                    "max_top_share": cfg.eval.max_top_share,
                                    "min_phi_spread": cfg.eval.min_phi_spread}, **subject}
    ledger_record("eval", {**subject, "pass": passed, "reason": reason, "threshold": threshold,
                           "metrics": {k: v for k, v in metrics.items() if k != "samples"}})
    if args.push:
        if passed:
            out["push"] = push(path, repo, log=progress)
            ledger_record("push", {**subject, **out["push"]})
        else:
            out["push"] = None
            progress("carl: not pushed: the eval gate failed")
    progress(f"carl: eval {'PASS' if passed else 'FAIL'}: {reason}")
    emit(out)
    return 0 if passed else 1


def _best_of(model, tok, rows, cfg, n: int, select: str) -> dict[str, Any]:
    """Task metric of the best-of-N selected completion per held-out prompt (engine.bestof)."""
    from engine.bestof import best_of_texts
    from engine.errors import ValidationError
    from engine.trainer.grpo import task_metric_name
    from engine.trainer.task_rewards import build_all

    if not 1 <= n <= 64:
        raise ValidationError(f"--best-of must be in [1, 64], got {n}", context={"best_of": n})
    prompts = [r["prompt"] for r in rows]
    texts = best_of_texts(model, tok, prompts, n, select, cfg.grpo.max_completion_length, seed=cfg.grpo.seed,
                          weights=cfg.rewards.carl.weights.model_dump())
    fn = {name: f for name, _, f in build_all(cfg.task)}[task_metric_name(cfg)]
    extra = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"} if rows else {}
    scores = [float(s) for s in fn(prompts, texts, **extra) if s is not None] if rows else []
    return {"n": n, "select": select, "task_metric": sum(scores) / len(scores) if scores else None}

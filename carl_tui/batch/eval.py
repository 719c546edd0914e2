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
    src.add_argument("--run", help="run id or prefix (its final/ model, else its last checkpoint), or RUN/checkpoint-N, "
                                   "RUN@N, RUN/final")
    src.add_argument("--adapter", help="a model or LoRA adapter: a directory, or any model name (RUN/checkpoint-N, "
                                       "builtin:tiny, a Hub id …)")
    p.add_argument("--config", help="carl.yaml for --adapter (default ./carl.yaml, else the demo)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE")
    p.add_argument("--threshold", type=float, help="task metric needed (default eval.threshold)")
    p.add_argument("--n", type=int, help="held-out prompts to use (default eval.n_samples; the demo uses all 200)")
    p.add_argument("--device", help="where to evaluate (default: the run's compute.device, where it trained)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights dtype (default: the run's model.dtype)")
    p.add_argument("--push", action="store_true", help="after a pass, push the model to the Hub (HF_ENDPOINT respected)")
    p.add_argument("--repo", help="Hub repo id for --push (default eval.push_to)")
    p.add_argument("--best-of", type=int, metavar="N", help="also report the task metric of best-of-N sampled "
                                                             "completions (the gate itself stays on greedy)")
    p.add_argument("--select", default="logprob",
                   choices=("self_certainty", "borda", "deepconf", "phi", "carl", "logprob", "majority", "random"),
                   help="how --best-of picks (default logprob; docs/coherence.md); votes use the task's extraction")
    p.add_argument("--borda-p", type=float, default=0.5, metavar="P",
                   help="Borda power (rank r gets (N-r+1)^P votes; 0 = majority)")
    p.add_argument("--eta", type=float, default=0.1, metavar="F",
                   help="DeepConf: top fraction kept by lowest group confidence")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from engine.config import load_config, validate_dict
    from engine.errors import ConfigError, ValidationError
    from engine.runs import RunStore, ledger_record

    subject: dict[str, Any]
    before = None  # the starting model's task metric (a run's meta), for eval.min_gain
    if args.run:
        from engine.models.names import parse_run_name, run_model_dir

        store = RunStore()
        run_ref, step, final = parse_run_name(args.run.removeprefix("run:")) or (args.run, None, False)
        run_id = store.resolve(run_ref)
        d = store.run_dir(run_id)
        cfg = validate_dict(yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")), source=str(d))
        if args.sets:
            from engine.config import apply_overrides

            cfg = validate_dict(apply_overrides(cfg.model_dump(mode="json"), args.sets), source=str(d))
        _, path, _ = run_model_dir(run_id, step=step, final=final)  # engine.models: the names infer takes
        subject = {"run_id": run_id, "model_path": str(path)}
        before = ((json.loads((d / "meta.json").read_text(encoding="utf-8")).get("eval") or {}).get("before")
                  or {}).get("task_metric") if (d / "meta.json").is_file() else None
    else:
        cfg, _ = load_config(args.config, args.sets)
        path = Path(args.adapter).expanduser()
        if not path.is_dir():  # any other model name, resolved as infer resolves it (engine.models)
            from engine.models import resolve_name

            ref = resolve_name(args.adapter, log=progress)
            path = Path(ref.adapter or ref.model)
            if not path.is_dir():
                raise ValidationError(f"{args.adapter!r} is not a local model (Hub models are evaluated after a "
                                      "download: name the downloaded directory)", context={"adapter": args.adapter})
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
    model, tok = load_for_eval(path, cfg, device=args.device, dtype=args.dtype)
    _, rows = load_rows(cfg)
    n = args.n or (len(rows) if cfg.dataset.source == "builtin:addition" else cfg.eval.n_samples)
    metrics = evaluate(model, tok, rows, cfg, n=n)
    if args.best_of is not None:
        metrics["best_of"] = _best_of(model, tok, rows[:n], cfg, args.best_of, args.select, p=args.borda_p,
                                      eta=args.eta)
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


def _best_of(model, tok, rows, cfg, n: int, select: str, *, p: float = 0.5, eta: float = 0.1) -> dict[str, Any]:
    """Task metric of the best-of-N selected completion per held-out prompt (engine.bestof)."""
    from engine.bestof import best_of_texts, task_extractor
    from engine.errors import ValidationError
    from engine.settings import from_config
    from engine.trainer.task_rewards import build_all, task_metric_name

    if not 1 <= n <= 64:
        raise ValidationError(f"--best-of must be in [1, 64], got {n}", context={"best_of": n})
    prompts = [r["prompt"] for r in rows]
    from engine.prompts import PromptFormat

    if not p >= 0 or not 0 < eta <= 1:
        raise ValidationError(f"--borda-p must be ≥ 0 and --eta in (0, 1], got {p} and {eta}")
    extract = task_extractor(from_config(cfg, "").extract)
    texts = best_of_texts(model, tok, prompts, n, select, cfg.grpo.max_completion_length, seed=cfg.grpo.seed,
                          extract=extract, p=p, eta=eta, weights=cfg.rewards.carl.weights.model_dump(),
                          fmt=PromptFormat.from_config(cfg))
    fn = {name: f for name, _, f in build_all(cfg.task)}[task_metric_name(cfg)]
    extra = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"} if rows else {}
    scores = [float(s) for s in fn(prompts, texts, **extra) if s is not None] if rows else []
    return {"n": n, "select": select, "borda_p": p, "eta": eta,
            "task_metric": sum(scores) / len(scores) if scores else None}

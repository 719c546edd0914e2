"""The eval gate: greedy completions on a held-out set, scored by the task metric and the coherence field.

``pass`` iff ``task_metric >= threshold`` AND ``phi_mean >= eval.phi_min`` (SIGMA = 3/16) AND the collapse
checks of :mod:`engine.trainer.evalchecks` pass (distinct answers over the eval set, the most common answer's
share, the spread of Phi across completions; they replaced the discontinuity band, which passed collapse).
It **fails closed**: when the coherence metrics cannot be computed (no completions, non-finite values) the gate
fails with a reason. ``phi_mean`` is the mean Phi over all completion tokens; ``discontinuity`` (still
reported, no longer checked) the mean per-completion score; both come from the policy's own next-token
distributions conditioned on the prompt.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable


def greedy_completions(model, tok, prompts: list[str], max_new_tokens: int, batch: int = 64, fmt=None,
                       budget_mb: float | None = None):
    """(completion texts, prompt id lists, completion id lists) by greedy decoding, ``batch`` prompts at a time
    (fewer when one decoding step's scores would not fit ``budget_mb``; see engine.memory); prompts are rendered
    by ``fmt`` (engine.prompts.PromptFormat: chat template, system prompt, left truncation), raw when None."""
    from engine.prompts import RAW, encode_many

    import torch

    from engine import memory

    budget = memory.budget_mb(budget_mb, memory.device_of(model))
    batch = min(batch, memory.generation_batch(budget, memory.vocab_size(model), memory.output_bytes(model)))

    texts, p_ids, c_ids = [], [], []
    model.eval()
    device = next(model.parameters()).device
    from engine.models.stops import cut_at_stop, stop_ids

    stops = stop_ids(model, tok)  # where training stops: generation config ∪ tokenizer eos ∪ end of turn
    for i in range(0, len(prompts), batch):
        chunk = prompts[i: i + batch]
        ids = encode_many(chunk, tok, fmt or RAW)
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        inp = torch.full((len(ids), width), pad, dtype=torch.long)
        attn = torch.zeros((len(ids), width), dtype=torch.long)
        for j, x in enumerate(ids):  # left padding for generation
            inp[j, width - len(x):] = torch.tensor(x)
            attn[j, width - len(x):] = 1
        with torch.no_grad(), memory.oom_guard("eval generation", budget, batch=len(ids)):
            out = model.generate(input_ids=inp.to(device), attention_mask=attn.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=stops)
        for j, row in enumerate(out[:, width:].tolist()):
            comp, stopped = cut_at_stop(row, stops)
            if not stopped and comp and comp[-1] == pad and pad not in stops:
                comp = [t for t in comp if t != pad]
            p_ids.append(list(ids[j]))
            c_ids.append(comp)
            texts.append(tok.decode(comp, skip_special_tokens=True))
    return texts, p_ids, c_ids


def evaluate(model, tok, rows: list[dict[str, Any]], cfg, *, n: int | None = None) -> dict[str, Any]:
    """Task metric and coherence metrics of greedy completions on ``rows``."""
    import torch

    from engine.probe import SIGMA
    from engine.rewards import carl_from_field, field_from_forward
    from engine.trainer.evalchecks import answer_stats, phi_spread
    from engine.trainer.task_rewards import build_all, task_metric_name

    if getattr(cfg, "environment", None) is not None:  # agents: the tool loop, scored by the environment
        from engine.envs.evaluate import evaluate_agent

        return evaluate_agent(model, tok, rows, cfg, n)
    rows = rows[: n] if n else rows
    prompts = [r["prompt"] for r in rows]
    from engine.memory import budget_from, device_of
    from engine.prompts import PromptFormat, as_text

    budget = budget_from(cfg, device_of(model))  # compute.logits_budget_mb: generation and field in bounded chunks
    texts, p_ids, c_ids = greedy_completions(model, tok, prompts, cfg.grpo.max_completion_length,
                                             fmt=PromptFormat.from_config(cfg), budget_mb=budget)
    metric = task_metric_name(cfg)
    fn = {name: f for name, _, f in build_all(cfg.task)}[metric]
    extra = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"} if rows else {}
    scores = fn(prompts, texts, completion_ids=c_ids, **extra) if rows else []
    scores = [float(s) for s in scores if s is not None]
    out: dict[str, Any] = {"n": len(rows), "task_metric_name": metric,
                           "task_metric": sum(scores) / len(scores) if scores else None}
    nonempty = [i for i, c in enumerate(c_ids) if c]
    if nonempty:
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        phi, sel, mask = field_from_forward(model, [p_ids[i] for i in nonempty], [c_ids[i] for i in nonempty], pad,
                                            budget_mb=budget)
        comps = carl_from_field(phi, sel, mask, cfg.rewards.carl.weights.model_dump())
        m = mask.float()
        out["phi_mean"] = float((phi * m).sum() / m.sum().clamp(min=1))
        for k in ("coherence", "cloud", "discontinuity", "carl"):
            out[k] = float(comps[k].mean())
        out["crystallized_fraction"] = float(((phi >= SIGMA) & mask).sum() / m.sum().clamp(min=1))
        out["phi_spread"] = phi_spread(phi, mask)
    else:
        out.update(phi_mean=None, coherence=None, cloud=None, discontinuity=None, carl=None, phi_spread=None)
    out.update(answer_stats(texts))
    out["completion_length"] = sum(len(c) for c in c_ids) / max(1, len(c_ids))
    out["samples"] = [{"prompt": as_text(p), "completion": t} for p, t in list(zip(prompts, texts))[:3]]
    return out


def task_accuracy(model, tok, rows: list[dict[str, Any]], cfg) -> float:
    """The task metric of greedy completions on ``rows`` (the SFT stage's validation check, the demo's warm start)."""
    from engine.prompts import PromptFormat
    from engine.trainer.task_rewards import build_all, task_metric_name

    prompts = [r["prompt"] for r in rows]
    texts, _, c_ids = greedy_completions(model, tok, prompts, cfg.grpo.max_completion_length,
                                         fmt=PromptFormat.from_config(cfg), batch=128)
    fn = {n: f for n, _, f in build_all(cfg.task)}[task_metric_name(cfg)]
    extra = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"} if rows else {}
    scores = [float(s) for s in fn(prompts, texts, completion_ids=c_ids, **extra) if s is not None]
    return sum(scores) / len(scores) if scores else 0.0


def decide(metrics: dict[str, Any], ecfg, threshold: float | None = None,
           before: float | None = None) -> tuple[bool, str]:
    """(pass, reason). Fails closed on missing task or coherence data. The collapse checks (distinct answers,
    top-answer share, Phi spread) are engine.trainer.evalchecks. ``before``: the starting model's task metric,
    which ``eval.min_gain`` needs (set and unknown: fails closed)."""
    from engine.trainer.evalchecks import check_collapse

    thr = ecfg.threshold if threshold is None else threshold

    def ok(v):
        return isinstance(v, (int, float)) and math.isfinite(v)

    if not ok(metrics.get("task_metric")):
        return False, "task metric missing: no scored completions"
    if not ok(metrics.get("phi_mean")):
        return False, "coherence data missing: phi could not be computed (fails closed)"
    fails, missing = check_collapse(metrics, ecfg)
    if missing:
        return False, f"coherence data missing: {missing} could not be computed (fails closed)"
    gain = getattr(ecfg, "min_gain", None)
    if gain is not None:
        if not ok(before):
            fails.insert(0, f"eval.min_gain {gain:g} set but the starting model's task metric is unknown "
                            f"(evaluate a run, or set eval.min_gain: null)")
        elif metrics["task_metric"] < before + gain:
            fails.insert(0, f"task metric {metrics['task_metric']:.3f} < start {before:.3f} + "
                            f"eval.min_gain {gain:g}")
    if metrics["task_metric"] < thr:
        fails.insert(0, f"task metric {metrics['task_metric']:.3f} < threshold {thr:.3f}")
    if metrics["phi_mean"] < ecfg.phi_min:
        fails.append(f"phi_mean {metrics['phi_mean']:.3f} < SIGMA {ecfg.phi_min:.4f}")
    if fails:
        return False, "; ".join(fails)
    gained = f" (start {before:.3f} + {gain:g})" if gain is not None else ""
    return True, (f"task metric {metrics['task_metric']:.3f} >= {thr:.3f}{gained}, phi_mean {metrics['phi_mean']:.3f} >= "
                  f"SIGMA, no collapse (distinct {metrics.get('distinct_fraction', 0):.2f}, top answer "
                  f"{metrics.get('top_answer_share', 0):.0%}, phi spread {metrics.get('phi_spread', 0):.4f})")


def load_for_eval(path: Path, cfg, *, device: str | None = None, dtype: str | None = None):
    """A model (full or LoRA adapter) and tokenizer from a run's final/ or checkpoint dir, or an adapter path,
    through engine.models' one loader — on the config's device, in its dtype and quantization (where the run
    trained) unless ``device`` / ``dtype`` say otherwise. An adapter's base is its ``base_model_name_or_path``, or
    the config's ``model.name_or_path`` when that is gone."""
    from engine.models import LoadOptions, ModelRef, load_model
    from engine.models.names import adapter_base, base_ref, has_tokenizer, looks_like_path

    path = Path(path).expanduser().resolve()
    if (path / "adapter_config.json").is_file():
        base = adapter_base(path) or cfg.model.name_or_path
        if not base.startswith("builtin:") and not Path(base).exists() and looks_like_path(base):
            base = cfg.model.name_or_path
        b = base_ref(base)
        ref = ModelRef(b.model, adapter=str(path), tokenizer=str(path) if has_tokenizer(path) else b.tokenizer,
                       label=str(path))
    else:
        ref = ModelRef(str(path), tokenizer=str(path), label=str(path))
    return load_model(ref, LoadOptions.from_config(cfg, device=device, dtype=dtype))


def push(path: Path, repo_id: str, *, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Upload a model folder to the Hub (``HF_ENDPOINT`` respected). Needs a token."""
    from engine.errors import CredentialError, NetworkError

    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise CredentialError("pushing to the Hub needs a Hugging Face token",
                              hint="Set HF_TOKEN (or run `hf auth login`); carl never stores it.",
                              context={"repo_id": repo_id})
    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, exist_ok=True, private=True)
        info = api.upload_folder(folder_path=str(path), repo_id=repo_id, commit_message="carl: eval gate passed")
    except Exception as exc:
        from huggingface_hub.errors import HfHubHTTPError

        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(exc, HfHubHTTPError) and status in (401, 403):
            raise CredentialError(f"the Hub refused the token for {repo_id} (HTTP {status})",
                                  context={"repo_id": repo_id}) from None
        raise NetworkError(f"push to {repo_id} failed: {type(exc).__name__}: {exc}".split("\n")[0],
                           context={"repo_id": repo_id, "endpoint": endpoint}) from None
    url = getattr(info, "commit_url", None) or str(info)
    log(f"pushed {path} to {repo_id}")
    return {"repo_id": repo_id, "endpoint": endpoint or "https://huggingface.co", "commit_url": url}

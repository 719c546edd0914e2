"""Evaluation of an agent: greedy rollouts with the same tool loop as training, scored by the environment.

For each eval row: a fresh environment ``reset(**row)``; the prompt rendered with the environment's tools;
greedy generation; the reply parsed with TRL's response parser (``<tool_call>`` blocks); each call run on the
environment and its result appended as a ``tool`` message; repeated up to ``environment.max_tool_calls`` rounds.
The environment's reward scores the rollout. Phi/CARL are computed over the generated tokens only (tool-result
tokens masked), like in training. The output has evalgate's keys (``task_metric``, ``phi_mean``, ``coherence``,
``cloud``, ``discontinuity``, ``carl`` …) plus the three agent numbers.
"""

from __future__ import annotations

import inspect
from typing import Any


def _tools(env: Any) -> dict[str, Any]:
    return {n: getattr(env, n) for n, _ in inspect.getmembers(type(env), predicate=inspect.isfunction)
            if not n.startswith("_") and n not in ("reset", "get_reward")}


def _run_call(tools: dict[str, Any], call: dict[str, Any]) -> Any:
    fn = (call.get("function") or {}) if isinstance(call, dict) else {}
    name = fn.get("name")
    try:
        if name not in tools:
            raise ValueError(f"Tool {name} not found.")
        args = fn.get("arguments") or {}
        if isinstance(args, str):
            import json

            args = json.loads(args)
        return tools[name](**args)
    except Exception as exc:  # what TRL does: the error becomes the tool message
        return {"error": str(exc)}


def rollout(model, tok, env, row: dict[str, Any], max_turns: int, max_new_tokens: int) -> dict[str, Any]:
    """One greedy agent rollout: messages, token ids (prompt, completion), tool mask (1 = generated)."""
    import torch

    tools = _tools(env)
    prompt = list(row["prompt"]) if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
    text = tok.apply_chat_template(prompt, tools=list(tools.values()), add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    ids = list(prompt_ids)
    mask: list[int] = []
    messages: list[dict[str, Any]] = []
    device = next(model.parameters()).device
    from engine.models.stops import stop_ids

    stops = stop_ids(model, tok)  # where training stops (engine.models)
    for turn in range(max_turns + 1):
        with torch.no_grad():
            out = model.generate(torch.tensor([ids], device=device), attention_mask=torch.ones(1, len(ids),
                                 dtype=torch.long, device=device), max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=stops)
        new = out[0][len(ids):].tolist()
        ids += new
        mask += [1] * len(new)
        prefix = tok.decode(ids[: len(ids) - len(new)], skip_special_tokens=False)
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
        # the template's rendering of the tool messages after the assistant turn, as TRL splices them in
        before = tok.apply_chat_template(prompt + messages[:-len(results)], tools=list(tools.values()),
                                         tokenize=False)
        after = tok.apply_chat_template(prompt + messages, tools=list(tools.values()), add_generation_prompt=True,
                                        tokenize=False)
        suffix = after[len(before):] if after.startswith(before) else after
        suffix_ids = tok(suffix, add_special_tokens=False)["input_ids"]
        ids += suffix_ids
        mask += [0] * len(suffix_ids)
    return {"messages": messages, "prompt_ids": prompt_ids, "completion_ids": ids[len(prompt_ids):], "mask": mask}


def evaluate_agent(model, tok, rows: list[dict[str, Any]], cfg, n: int | None = None) -> dict[str, Any]:
    from engine.envs.factory import make_factory
    from engine.envs.rewards import ENV_REWARDS, agent_metrics
    from engine.envs.training import apply_tool_mask
    from engine.probe import SIGMA
    from engine.rewards import carl_from_field, field_from_forward
    from engine.trainer.evalchecks import answer_stats, phi_spread

    rows = rows[:n] if n else rows
    if getattr(tok, "response_template", None) is None and getattr(tok, "response_schema", None) is None:
        try:
            from trl.chat_template_utils import add_response_schema

            add_response_schema(tok)
        except ValueError:
            pass  # unparseable replies then count as no tool call
    factory = make_factory(cfg.environment.kind, cfg.environment.limits)
    name, score = ENV_REWARDS[cfg.environment.kind]
    envs, outs = [], []
    was_training = model.training
    model.eval()
    for row in rows:
        env = factory()
        env.reset(**row)
        outs.append(rollout(model, tok, env, row, cfg.environment.max_tool_calls, cfg.grpo.max_completion_length))
        envs.append(env)
    if was_training:
        model.train()
    completions = [o["messages"] for o in outs]
    values = score([r["prompt"] for r in rows], completions, environments=envs)
    out: dict[str, Any] = {"n": len(rows), "task_metric_name": name,
                           "task_metric": sum(values) / len(values) if values else None}
    out.update(agent_metrics(completions, envs, values) if rows else {})
    keep = [i for i, o in enumerate(outs) if o["completion_ids"]]
    if keep:
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        phi, sel, mask = field_from_forward(model, [outs[i]["prompt_ids"] for i in keep],
                                            [outs[i]["completion_ids"] for i in keep], pad)
        mask = apply_tool_mask(mask, [outs[i]["mask"] for i in keep])
        from engine.envs.training import phi_per_turn

        out["phi_turns"] = phi_per_turn(phi, mask, [outs[i]["mask"] for i in keep])  # mean Phi per assistant turn
        comps = carl_from_field(phi, sel, mask, cfg.rewards.carl.weights.model_dump())
        m = mask.float()
        out["phi_mean"] = float((phi * m).sum() / m.sum().clamp(min=1))
        for k in ("coherence", "cloud", "discontinuity", "carl"):
            out[k] = float(comps[k].mean())
        out["crystallized_fraction"] = float(((phi >= SIGMA) & mask.bool()).sum() / m.sum().clamp(min=1))
        out["phi_spread"] = phi_spread(phi, mask.bool())
    else:
        out.update(phi_mean=None, coherence=None, cloud=None, discontinuity=None, carl=None, phi_spread=None,
                   phi_turns=[])
    # the eval gate's collapse checks read the final answers (the last assistant message of each rollout)
    out.update(answer_stats([_final_text(c) for c in completions]))
    out["completion_length"] = sum(sum(o["mask"]) for o in outs) / max(1, len(outs))
    out["samples"] = [{"prompt": r["prompt"], "completion": c} for r, c in list(zip(rows, completions))[:3]]
    for e in envs:
        close = getattr(e, "_close", None)
        if close:
            close()
    return out


def _final_text(messages: Any) -> str:
    """The text of a rollout's last assistant message ('' when there is none)."""
    if isinstance(messages, str):
        return messages
    for m in reversed(list(messages or [])):
        if isinstance(m, dict) and m.get("role") == "assistant":
            content = m.get("content")
            return content if isinstance(content, str) else str(content or "")
    return ""

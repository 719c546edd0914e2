"""Task reward functions in TRL's reward-function shape: ``f(prompts, completions, **kwargs) -> list[float]``.

Built-ins (chosen in carl.yaml ``task.rewards``):

* ``exact``     — 1 if the completion (stripped; the last line for multi-line text) equals the answer, else 0.
* ``numeric``   — 1 if the last number in the completion is within ``tolerance`` of the answer's last number.
* ``regex``     — 1 if ``pattern`` matches the completion (``re.search``), else 0.
* ``tool_json`` — 1 if the completion holds a JSON object with a string ``name`` and an object ``arguments``
                  (a tool call; a ```json fence or ``<tool_call>`` tags around it are fine), else 0.
* ``concise``   — ``min(1, target_length / n_tokens)``: 1 up to the token budget, decaying beyond it.
* ``python``    — a user's own ``module:function`` with the same signature.

The answer column is ``dataset.answer_field`` (renamed to ``answer`` by engine.trainer.data).
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Any, Callable

from engine.errors import ConfigError

_NUM = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _text(c: Any) -> str:
    """Completion text; conversational completions are a list of messages."""
    if isinstance(c, list):
        return "".join(str(m.get("content", "")) for m in c if isinstance(m, dict))
    return str(c)


def _final(text: str) -> str:
    text = text.strip()
    if "####" in text:  # GSM8K-style final answer marker
        text = text.split("####")[-1]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def last_number(text: str) -> float | None:
    found = _NUM.findall(_text(text).split("####")[-1])
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def exact(prompts, completions, answer=None, **kwargs) -> list[float]:
    answers = answer if answer is not None else [None] * len(completions)
    return [float(a is not None and _final(_text(c)) == _final(str(a))) for c, a in zip(completions, answers)]


def make_numeric(tolerance: float) -> Callable[..., list[float]]:
    def numeric(prompts, completions, answer=None, **kwargs) -> list[float]:
        answers = answer if answer is not None else [None] * len(completions)
        out = []
        for c, a in zip(completions, answers):
            got, want = last_number(_text(c)), last_number(str(a)) if a is not None else None
            out.append(float(got is not None and want is not None and abs(got - want) <= tolerance))
        return out

    return numeric


def make_regex(pattern: str) -> Callable[..., list[float]]:
    try:
        rx = re.compile(pattern, re.S)
    except re.error as exc:
        raise ConfigError(f"task.rewards: invalid regex {pattern!r}: {exc}", context={"pattern": pattern}) from None

    def regex(prompts, completions, **kwargs) -> list[float]:
        return [float(rx.search(_text(c)) is not None) for c in completions]

    return regex


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_TAGS = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def is_tool_call(text: str) -> bool:
    text = _text(text).strip()
    candidates = [m.group(1) for m in _TAGS.finditer(text)] + [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for cand in candidates:
        try:
            obj = json.loads(cand.strip())
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"] \
                and isinstance(obj.get("arguments", {}), dict):
            return True
    return False


def tool_json(prompts, completions, **kwargs) -> list[float]:
    return [float(is_tool_call(c)) for c in completions]


def make_concise(target_length: int) -> Callable[..., list[float]]:
    def concise(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        lengths = [len(c) for c in completion_ids] if completion_ids is not None else \
            [len(_text(c).split()) for c in completions]
        return [min(1.0, target_length / n) if n > 0 else 1.0 for n in lengths]

    return concise


def load_function(spec: str) -> Callable[..., list[float]]:
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"task.rewards: cannot load {spec!r}: {exc}",
                          hint="Use module:function importable from the project directory.",
                          context={"function": spec}) from None
    if not callable(fn):
        raise ConfigError(f"task.rewards: {spec!r} is not callable", context={"function": spec})
    return fn


def build(reward_cfg) -> tuple[str, Callable[..., list[float]]]:
    """(name, function) for one ``task.rewards`` entry."""
    kind = reward_cfg.kind
    if kind == "exact":
        fn = exact
    elif kind == "numeric":
        fn = make_numeric(reward_cfg.tolerance)
    elif kind == "regex":
        fn = make_regex(reward_cfg.pattern)
    elif kind == "tool_json":
        fn = tool_json
    elif kind == "concise":
        fn = make_concise(reward_cfg.target_length)
    elif kind == "python":
        fn = load_function(reward_cfg.function)
    else:  # pragma: no cover - the config model forbids it
        raise ConfigError(f"unknown task reward kind {kind!r}")
    name = kind if kind != "python" else reward_cfg.function.split(":")[-1]
    return name, fn


def build_all(task_cfg) -> list[tuple[str, float, Callable[..., list[float]]]]:
    """[(unique name, weight, fn)] for every task reward, in order."""
    out, seen = [], {}
    for r in task_cfg.rewards:
        name, fn = build(r)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}_{seen[name]}"
        out.append((name, float(r.weight), fn))
    return out

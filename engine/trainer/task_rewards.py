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

Answer extraction (``extract`` of an exact / numeric / regex reward) picks the part of a reasoning completion
that is judged; when it finds nothing the completion scores 0:

* ``auto``        — the kind's own rule (exact: the last non-empty line after any ``####``; numeric: the last
                    number after any ``####``; regex: the whole completion).
* ``gsm8k``       — the text after the last ``####`` (GSM8K's ``#### 42``).
* ``boxed``       — the content of the last ``\boxed{…}`` (nested braces kept, ``\fbox`` too).
* ``last_number`` — the last number in the completion.
* ``answer_tag``  — the content of the last ``<answer>…</answer>``.

The reference answer is read the same way for every extractor: after GSM8K's ``####`` when present.
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


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
EXTRACTORS = ("auto", "gsm8k", "boxed", "last_number", "answer_tag")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (balanced braces), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text):
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
            i += 1
    return None


def extract_answer(text: str, how: str) -> str | None:
    """The judged part of a completion (module docstring); ``auto`` returns the text as it is."""
    text = _text(text)
    if how == "auto":
        return text
    if how == "gsm8k":
        return text.rsplit("####", 1)[1].strip() if "####" in text else None
    if how == "boxed":
        got = last_boxed(text)
        return got.strip() if got is not None else None
    if how == "last_number":
        found = _NUM.findall(text)
        return found[-1] if found else None
    if how == "answer_tag":
        found = _ANSWER_TAG.findall(text)
        return found[-1].strip() if found else None
    raise ConfigError(f"unknown answer extraction {how!r}", hint=f"One of {', '.join(EXTRACTORS)}.",
                      context={"extract": how})


def _number(text: str) -> float | None:
    found = _NUM.findall(text)
    try:
        return float(found[-1].replace(",", "")) if found else None
    except ValueError:
        return None


def make_exact(extract: str = "auto") -> Callable[..., list[float]]:
    def exact(prompts, completions, answer=None, **kwargs) -> list[float]:
        answers = answer if answer is not None else [None] * len(completions)
        out = []
        for c, a in zip(completions, answers):
            got = extract_answer(c, extract)
            out.append(float(a is not None and got is not None and _final(got) == _final(str(a))))
        return out

    return exact


exact = make_exact("auto")


def make_numeric(tolerance: float, extract: str = "auto") -> Callable[..., list[float]]:
    def numeric(prompts, completions, answer=None, **kwargs) -> list[float]:
        answers = answer if answer is not None else [None] * len(completions)
        out = []
        for c, a in zip(completions, answers):
            part = extract_answer(c, extract)
            got = None if part is None else (last_number(part) if extract == "auto" else _number(part))
            want = last_number(str(a)) if a is not None else None
            out.append(float(got is not None and want is not None and abs(got - want) <= tolerance))
        return out

    return numeric


def make_regex(pattern: str, extract: str = "auto") -> Callable[..., list[float]]:
    try:
        rx = re.compile(pattern, re.S)
    except re.error as exc:
        raise ConfigError(f"task.rewards: invalid regex {pattern!r}: {exc}", context={"pattern": pattern}) from None

    def regex(prompts, completions, **kwargs) -> list[float]:
        parts = [extract_answer(c, extract) for c in completions]
        return [float(p is not None and rx.search(p) is not None) for p in parts]

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
    extract = getattr(reward_cfg, "extract", "auto")
    if kind == "exact":
        fn = make_exact(extract)
    elif kind == "numeric":
        fn = make_numeric(reward_cfg.tolerance, extract)
    elif kind == "regex":
        fn = make_regex(reward_cfg.pattern, extract)
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


def task_metric_name(cfg) -> str:
    """The task reward the cascade gate watches and the eval gate scores: ``task.metric``, else the first."""
    names = [n for n, _, _ in build_all(cfg.task)]
    metric = cfg.task.metric or names[0]
    if metric not in names:
        raise ConfigError(f"task.metric {metric!r} is not one of the task rewards {names}",
                          context={"metric": metric, "rewards": names})
    return metric

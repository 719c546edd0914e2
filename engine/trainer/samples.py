"""A bounded sample of each logged step's completions for the frame (observe's completions table).

The reward functions see every completion of a batch; the first ``SAMPLES_PER_FRAME`` are kept with their
scores — the task reward (weighted sum of the task functions, as GRPO adds them), CARL's raw reward, the
reward GRPO trained on (task + CARL's share after the cascade gate), and the completion's mean Φ — and go into the next frame as
``samples``: at most 4 × (80 + 160) characters of text per frame, never the whole batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

SAMPLES_PER_FRAME = 4
PROMPT_CHARS = 80  # the prompt's tail
COMPLETION_CHARS = 160  # the completion's head


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def take(prompts: Sequence[Any], completions: Sequence[Any], as_text: Callable[[Any], str],
         k: int = SAMPLES_PER_FRAME) -> list[dict[str, Any]]:
    """The first ``k`` (prompt, completion) pairs of a batch, as bounded text."""
    return [{"i": i, "prompt": as_text(p)[-PROMPT_CHARS:], "completion": as_text(c)[:COMPLETION_CHARS]}
            for i, (p, c) in enumerate(zip(prompts[:k], completions[:k]))]


def score(samples: list[dict[str, Any]] | None, *, carl_part: Sequence[Any] | None = None,
          carl: Sequence[Any] | None = None, phi: Sequence[Any] | None = None) -> None:
    """Add per-completion numbers (indexed like the batch) to the kept samples, in place: ``carl_part`` is what
    the CARL reward function returned (the cascade's weighted share, added to the task rewards with weight 1),
    ``carl`` the raw CARL reward, ``phi`` the completion's mean Φ."""
    for s in samples or ():
        i = s["i"]
        for name, vals in (("carl_part", carl_part), ("carl", carl), ("phi", phi)):
            if vals is not None and i < len(vals):
                s[name] = _num(vals[i])


def finish(samples: list[dict[str, Any]] | None, task_values: dict[str, list[float]],
           task_weights: dict[str, float]) -> list[dict[str, Any]] | None:
    """The samples for a frame: each with its task reward (the weighted sum of the task functions) and the reward
    GRPO trained on — the task reward plus CARL's share (``reward_weights`` give the CARL function 1)."""
    if not samples:
        return None
    out = []
    for s in samples:
        i = s["i"]
        parts = [task_weights.get(k, 1.0) * v[i] for k, v in task_values.items() if i < len(v)]
        task = _num(sum(parts)) if parts else None
        d = {k: v for k, v in s.items() if k not in ("i", "carl_part")}
        d["task"] = task
        part = s.get("carl_part")
        d["reward"] = None if task is None else (task + part if part is not None else task)
        out.append(d)
    return out

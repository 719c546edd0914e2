"""The completions table's rows: the sampled completions each frame carries (``Frame.samples``: prompt tail,
completion head, the reward GRPO trained on, the task reward, CARL's raw reward, mean Φ), or — for frames that
only carry one ``sample`` string (older carl runs, JSONL/trackio logs with a ``completion`` column) — that
string with the step's mean reward and Φ, marked as step means."""

from __future__ import annotations

import math
from typing import Any, Iterable

from engine.frames import Frame


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "⏎").replace("\t", " ")


def completion_rows(frames: Iterable[Frame]) -> list[dict[str, Any]]:
    """``[{"step", "n", "prompt", "completion", "reward", "task", "carl", "phi", "per": "completion"|"step"}]``
    in frame order; frames without any sample give no row."""
    rows: list[dict[str, Any]] = []
    for f in frames:
        if f.samples:
            for n, s in enumerate(f.samples):
                if not isinstance(s, dict):
                    continue
                rows.append({"step": f.step, "n": n, "prompt": one_line(str(s.get("prompt") or "")),
                             "completion": one_line(str(s.get("completion") or "")),
                             "reward": _num(s.get("reward")), "task": _num(s.get("task")),
                             "carl": _num(s.get("carl")), "phi": _num(s.get("phi")), "per": "completion"})
        elif f.sample:
            rows.append({"step": f.step, "n": 0, "prompt": "", "completion": one_line(f.sample),
                         "reward": _num(f.reward_mean), "task": _num(f.task_reward), "carl": _num(f.carl_reward),
                         "phi": _num(f.phi), "per": "step"})
    return rows

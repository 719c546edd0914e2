"""The seed's three agent numbers over a run's frames (the ``agent`` block of the observe summary).

Frames carry them as extra metrics logged by the environment's task reward each step (engine/envs/rewards.py):
``agent/task_completion``, ``agent/tool_format``, ``agent/tool_calls_per_task``; TRL adds
``tools/call_frequency`` and ``tools/failure_frequency``; the CARL reward logs ``agent/phi_turn_1``, ``…_2`` (mean
Phi per assistant turn), summarised here too.
"""

from __future__ import annotations

from typing import Any, Sequence

AGENT_METRICS = ("agent/task_completion", "agent/tool_format", "agent/tool_calls_per_task")
TRL_TOOL_METRICS = ("tools/call_frequency", "tools/failure_frequency")
TURN_PREFIX = "agent/phi_turn_"  # mean Phi of assistant turn N (engine/envs/training.py: phi_per_turn)


def agent_summary(frames: Sequence[Any]) -> dict[str, Any] | None:
    """``{name: {"first", "last", "mean", "steps"}}`` for each agent metric present; None for a non-agent run."""
    out: dict[str, Any] = {}
    names = {k for f in frames for k in (getattr(f, "extra", None) or {})}
    turns = sorted({k for k in names if k.startswith(TURN_PREFIX) and k[len(TURN_PREFIX):].isdigit()},
                   key=lambda k: int(k[len(TURN_PREFIX):]))
    for name in AGENT_METRICS + TRL_TOOL_METRICS + tuple(turns):
        vals = []
        for f in frames:
            v = f.get(name)
            if isinstance(v, (int, float)) and v == v:
                vals.append(float(v))
        if vals:
            out[name.split("/", 1)[1]] = {"first": vals[0], "last": vals[-1], "mean": sum(vals) / len(vals),
                                          "steps": len(vals)}
    return out or None

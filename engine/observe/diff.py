"""`run diff A B`: two runs aligned by step; deltas are B − A."""

from __future__ import annotations

from typing import Any, Sequence

from engine.frames import Frame
from engine.observe.analysis import crystallization_step, finite, phase

MAX_SERIES = 200  # aligned points kept in "series" (evenly subsampled beyond this)


def _delta_stats(pairs: list[tuple[int, float, float]]) -> dict[str, Any] | None:
    if not pairs:
        return None
    d = [b - a for _, a, b in pairs]
    return {"n": len(d), "mean_a": sum(a for _, a, _ in pairs) / len(d), "mean_b": sum(b for _, _, b in pairs) / len(d),
            "mean_delta": sum(d) / len(d), "last_a": pairs[-1][1], "last_b": pairs[-1][2], "last_delta": d[-1],
            "max_abs_delta": max(abs(x) for x in d)}


def _pairs(a: dict[int, Frame], b: dict[int, Frame], steps: list[int], name: str) -> list[tuple[int, float, float]]:
    out = []
    for s in steps:
        va, vb = a[s].get(name), b[s].get(name)
        if va is not None and vb is not None and finite(va) and finite(vb):
            out.append((s, float(va), float(vb)))
    return out


def diff_runs(frames_a: Sequence[Frame], frames_b: Sequence[Frame]) -> dict[str, Any]:
    """Compare two runs step by step.

    ``{"aligned_steps", "only_a", "only_b", "phi": stats|null, "rewards": {name: stats}, "crystallization_step":
    {"a", "b", "delta"}, "phase": {"a", "b"}, "series": [{"step", "phi_a", "phi_b", "reward_a", "reward_b"}]}``;
    each stats object holds ``n, mean_a, mean_b, mean_delta, last_a, last_b, last_delta, max_abs_delta`` over
    the steps both runs logged (a later frame of the same step wins)."""
    a = {f.step: f for f in frames_a}
    b = {f.step: f for f in frames_b}
    steps = sorted(a.keys() & b.keys())
    reward_names = ["reward_mean", "task_reward", "carl_reward"]
    fns = sorted({k for f in (*frames_a, *frames_b) for k in f.rewards})
    reward_names += [f"rewards/{k}" for k in fns]
    rewards = {n: st for n in reward_names if (st := _delta_stats(_pairs(a, b, steps, n))) is not None}
    ca, cb = crystallization_step(list(frames_a)), crystallization_step(list(frames_b))
    stride = max(1, -(-len(steps) // MAX_SERIES))
    series = [{"step": s, "phi_a": a[s].phi, "phi_b": b[s].phi, "reward_a": a[s].reward_mean,
               "reward_b": b[s].reward_mean} for s in steps[::stride]]
    return {
        "aligned_steps": len(steps),
        "only_a": len(a.keys() - b.keys()),
        "only_b": len(b.keys() - a.keys()),
        "phi": _delta_stats(_pairs(a, b, steps, "phi")),
        "entropy": _delta_stats(_pairs(a, b, steps, "entropy")),
        "rewards": rewards,
        "crystallization_step": {"a": ca, "b": cb, "delta": (cb - ca) if ca is not None and cb is not None else None},
        "phase": {"a": phase(list(frames_a)), "b": phase(list(frames_b))},
        "series": series,
    }

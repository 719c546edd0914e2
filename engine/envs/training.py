"""How agent environments plug into carl's GRPO wiring (engine/trainer/grpo.py calls these).

- :func:`factory_for` — TRL's ``environment_factory`` for ``cfg.environment`` (None without one);
- :func:`apply_tool_mask` — CARL over generated tokens only: tool-result tokens TRL spliced into a completion
  (``tool_mask`` 0) are dropped from the Phi field's mask before the CARL reward is computed.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence


def factory_for(cfg: Any) -> Callable[[], Any] | None:
    env = getattr(cfg, "environment", None)
    if env is None:
        return None
    from engine.envs.factory import make_factory

    return make_factory(env.kind, env.limits)


def apply_tool_mask(mask: Any, tool_mask: Sequence[Sequence[int]] | Any | None) -> Any:
    """``mask`` [B, T] (1 = a completion token) times the per-completion tool mask, aligned at the
    first completion token (both start there). A missing or mismatched tool mask leaves ``mask``."""
    if tool_mask is None:
        return mask
    import torch

    rows = [list(map(int, r.tolist() if hasattr(r, "tolist") else r)) for r in tool_mask]
    if len(rows) != mask.shape[0]:
        return mask
    keep = torch.ones_like(mask)
    width = mask.shape[1]
    for i, r in enumerate(rows):
        r = r[:width]
        if r:
            keep[i, : len(r)] = torch.tensor(r, dtype=mask.dtype, device=mask.device)
    return mask * keep


def generated_fraction(tool_mask: Sequence[Sequence[int]] | None) -> float | None:
    """The fraction of completion tokens the model generated (the rest are tool results)."""
    if not tool_mask:
        return None
    total = sum(len(r) for r in tool_mask)
    return (sum(int(x) for r in tool_mask for x in r) / total) if total else None


def turn_index(tool_mask_row: Sequence[int]) -> list[int]:
    """Per completion token: the assistant turn it belongs to (1, 2, …; a turn is a maximal run of generated
    tokens, tool_mask 1) or 0 for a tool-result token TRL spliced in."""
    out, turn, prev = [], 0, 0
    for x in tool_mask_row:
        x = int(x)
        if x and not prev:
            turn += 1
        out.append(turn if x else 0)
        prev = x
    return out


def phi_per_turn(phi: Any, mask: Any, tool_mask: Sequence[Sequence[int]] | Any | None) -> list[float]:
    """Mean Phi of each assistant turn: ``[turn 1, turn 2, …]``, each the mean over the rollouts that have that
    turn of the rollout's mean Phi over the turn's scored tokens (``mask`` 1: generated, not padding).
    Without a tool mask every completion is one turn. ``phi``/``mask``: [B, T] aligned at the first completion
    token (what the CARL reward sees)."""
    rows = [list(map(int, r.tolist() if hasattr(r, "tolist") else r)) for r in tool_mask] \
        if tool_mask is not None else None
    ph = phi.detach().float().cpu().tolist()
    mk = mask.detach().cpu().tolist()
    sums: dict[int, list[float]] = {}
    for i, (p_row, m_row) in enumerate(zip(ph, mk)):
        turns = turn_index(rows[i]) if rows is not None and i < len(rows) else [1] * len(p_row)
        per: dict[int, list[float]] = {}
        for j, (p, m) in enumerate(zip(p_row, m_row)):
            t = turns[j] if j < len(turns) else (turns[-1] if turns and turns[-1] else 0)
            if m and t:
                per.setdefault(t, []).append(float(p))
        for t, vals in per.items():
            sums.setdefault(t, []).append(sum(vals) / len(vals))
    return [sum(sums[t]) / len(sums[t]) for t in sorted(sums)] if sums else []

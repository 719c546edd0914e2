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

"""Phi without the reward: the coherence field's batch mean from the policy entropy a trainer already logs.

Phi_t = 1 - H(p_t) / log V (engine.probe). TRL logs ``entropy``: the mean per-token entropy (nats) of the
policy's next-token distributions over the batch's completion tokens, computed in the training forward at the
sampling temperature. Its mean Phi is therefore ``1 - entropy / log V`` exactly (Phi is affine in H), so a frame
carries ``phi`` whether or not the CARL reward runs, and a TRL run observed from outside gets it too when its
vocabulary size V (the logits' last dimension, ``config.vocab_size``) is known.

With CARL enabled the frame's ``phi`` is CARL's own (the mean over completions of each completion's token-mean
Phi, from the generation capture); without it, the token-mean derived here. They differ only by how tokens
are weighted across completions of different lengths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable


def phi_from_mean_entropy(entropy: Any, vocab_size: int | None) -> float | None:
    """Mean Phi from a mean entropy in nats; None when either is unknown or not finite."""
    if not isinstance(entropy, (int, float)) or isinstance(entropy, bool) or not math.isfinite(entropy):
        return None
    if not isinstance(vocab_size, int) or vocab_size < 2:
        return None
    return min(1.0, max(0.0, 1.0 - float(entropy) / math.log(vocab_size)))


def vocab_size_of(model: Any) -> int | None:
    """The logits' width of a transformers model (its config's vocab_size, through a PEFT wrapper too)."""
    for obj in (model, getattr(model, "base_model", None), getattr(getattr(model, "base_model", None), "model", None)):
        cfg = getattr(obj, "config", None)
        v = getattr(cfg, "vocab_size", None)
        if isinstance(v, int) and v > 1:
            return v
    try:
        return int(model.get_output_embeddings().weight.shape[0])
    except (AttributeError, TypeError):
        return None


def vocab_size_from_dir(*dirs: Path) -> int | None:
    """``vocab_size`` from the first ``config.json`` found in ``dirs`` (a checkpoint or output dir)."""
    for d in dirs:
        p = Path(d) / "config.json"
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        v = cfg.get("vocab_size") if isinstance(cfg, dict) else None
        if v is None and isinstance(cfg, dict):
            v = (cfg.get("text_config") or {}).get("vocab_size")
        if isinstance(v, int) and v > 1:
            return v
    return None


def fill_phi(frames: Iterable[Any], vocab_size: int | None) -> int:
    """Set ``phi`` from ``entropy`` on frames that have none; returns how many were filled."""
    n = 0
    if not vocab_size:
        return 0
    for f in frames:
        if f.phi is None:
            phi = phi_from_mean_entropy(f.entropy, vocab_size)
            if phi is not None:
                f.phi = phi
                n += 1
    return n

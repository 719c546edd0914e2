"""Which device ``auto`` means: CUDA when torch sees a GPU, else Apple's MPS when it is available, else the CPU.

One home for the rule, used by training (engine.trainer.grpo.resolve_device), infer and the try panel
(engine.infer). torch is imported only when asked.
"""

from __future__ import annotations


def auto_device() -> str:
    """``"cuda"``, ``"mps"`` or ``"cpu"``, in that order of preference."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"

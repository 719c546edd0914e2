"""The probe's constants: κ, σ, the defect threshold, the default CARL weights, DeepConf's k and window.

Every other module of :mod:`engine.probe` reads them from here (one definition each).
"""

from __future__ import annotations

KAPPA: float = 64.0 / 3.0
"""Conservation constant κ = 64/3; the coherence horizon of a width-``d`` model is T* = κ·d."""
SIGMA: float = 3.0 / 16.0
"""Crystallization threshold σ = 3/16: a token with Phi ≥ σ counts as crystallized."""
DEFECT_THRESHOLD: float = 0.03
"""|ΔPhi| above this between neighbouring tokens is a defect (crystallization if up, melting if down)."""
MAX_SCALES: int = 16
"""Multiscale coherence looks at block sizes 2^0 … 2^15 at most."""
DEFAULT_WEIGHTS: dict[str, float] = {"coherence": 0.5, "cloud": 0.3, "discontinuity": 0.2}
"""CARL = 0.5·coherence + 0.3·cloud + 0.2·discontinuity unless configured otherwise."""


def horizon(d: int | float) -> float:
    """The coherence horizon T* = KAPPA·d for a model of width ``d``."""
    return KAPPA * float(d)

DEEPCONF_TOPK: int = 20
"""DeepConf's k: token confidence is the negative mean log-probability of the k most likely tokens (Fu et al. 2025)."""
DEEPCONF_WINDOW: int = 2048
"""DeepConf's group (sliding-window) size in tokens; a trace shorter than the window is one group."""

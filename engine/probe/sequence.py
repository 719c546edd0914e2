"""Per-sequence reductions of the field: coherence, cloud, discontinuity, CARL, the intrinsic sequence scores."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from engine.errors import ProbeShapeError, ValidationError
from engine.probe.constants import DEEPCONF_WINDOW, DEFAULT_WEIGHTS, DEFECT_THRESHOLD, MAX_SCALES, SIGMA
from engine.probe.kernel import _is_torch

# ----------------------------------------------------------------------------------------------------------
# Metrics: small pure functions of one sequence's field (1-D numpy arrays)
# ----------------------------------------------------------------------------------------------------------

def _vec(a: Any) -> np.ndarray:
    if _is_torch(a):
        a = a.detach().double().cpu().numpy()
    return np.asarray(a, dtype=np.float64).reshape(-1)


def delta_phi(phi: Any) -> np.ndarray:
    """ΔPhi_k = Phi[k+1] - Phi[k], length T-1."""
    return np.diff(_vec(phi))


def cloud(phi: Any, selected_prob: Any) -> float:
    """cloud = mean(selected_prob · Phi); 0.0 for an empty sequence."""
    p, s = _vec(phi), _vec(selected_prob)
    return float(carl_components(p[None, :], s[None, :])["cloud"][0])


def coherence(phi: Any) -> float:
    """Multiscale coherence of the Phi field (the formula: :func:`carl_components`). T = 0 gives 0.5."""
    p = _vec(phi)
    return float(carl_components(p[None, :], np.zeros_like(p)[None, :])["coherence"][0])


def discontinuity(phi: Any) -> float:
    """Discontinuity score (the formula: :func:`carl_components`); 0.5 when there is no jump."""
    p = _vec(phi)
    return float(carl_components(p[None, :], np.zeros_like(p)[None, :])["discontinuity"][0])


def carl_reward(phi: Any, selected_prob: Any, weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """``{coherence, cloud, discontinuity, carl}`` with carl = w_coh·coherence + w_cloud·cloud + w_disc·discontinuity
    (default 0.5 / 0.3 / 0.2; the weights are used as given, not renormalised) of one sequence."""
    p, s = _vec(phi), _vec(selected_prob)
    return {k: float(v[0]) for k, v in carl_components(p[None, :], s[None, :], weights=weights).items()}


def carl_components(phi: Any, selected_prob: Any, mask: Any = None,
                    weights: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """THE definition of the CARL components, batched: ``{coherence, cloud, discontinuity, carl}``, each [B]
    float64, of ``phi`` / ``selected_prob`` [B, T] (numpy; ``mask`` [B, T] bool, True = real token, default all;
    each row's real tokens are taken in order).

    * cloud = mean over the tokens of selected_prob · Phi (0 for an empty row);
    * coherence: for j = 0, 1, … while 2^j ≤ T (at most :data:`MAX_SCALES` scales) split Phi[:n·2^j] into
      n = T // 2^j blocks of 2^j tokens, c_j = clamp(1 - mean over blocks of the block's population std, 0, 1);
      the mean of c_j weighted by 2^(j/2) (0.5 for an empty row);
    * discontinuity: for every |ΔPhi_k| > :data:`DEFECT_THRESHOLD` a rise scores 0.8 if Phi[k] < 0.5 else 0.3, a
      fall 0.2 if Phi[k] > 0.7 else 0.5; the mean of those scores (0.5 when there is none);
    * carl = w_coh·coherence + w_cloud·cloud + w_disc·discontinuity.
    """
    w = _weights(weights)
    phi = np.asarray(phi, dtype=np.float64)
    sp = np.asarray(selected_prob, dtype=np.float64)
    if phi.ndim != 2:
        raise ProbeShapeError(f"phi must be [B, T], got shape {list(phi.shape)}")
    bsz, t = phi.shape
    mask = np.ones((bsz, t), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if t and not bool((mask[:, 1:] <= mask[:, :-1]).all()):  # not right-padded: move real tokens to the front
        order = np.argsort(~mask, axis=1, kind="stable")
        phi, sp, mask = (np.take_along_axis(a, order, axis=1) for a in (phi, sp, mask))
    lengths = mask.sum(axis=1)
    valid = np.arange(t)[None, :] < lengths[:, None]
    phi = np.where(valid, phi, 0.0)
    sp = np.where(valid, sp, 0.0)
    lf = np.maximum(lengths, 1).astype(np.float64)

    cloud_v = np.where(lengths > 0, (phi * sp).sum(axis=1) / lf, 0.0)

    num = np.zeros(bsz)
    den = np.zeros(bsz)
    j = 0
    while (1 << j) <= t and j < MAX_SCALES:
        b = 1 << j
        nb = t // b
        std = phi[:, :nb * b].reshape(bsz, nb, b).std(axis=2)  # population std per block
        n_valid = lengths // b  # blocks fully inside the row
        bvalid = np.arange(nb)[None, :] < n_valid[:, None]
        c_j = np.clip(1.0 - (std * bvalid).sum(axis=1) / np.maximum(n_valid, 1), 0.0, 1.0)
        on = (lengths >= b).astype(np.float64)
        num += on * 2.0 ** (j / 2.0) * c_j
        den += on * 2.0 ** (j / 2.0)
        j += 1
    coh = np.where(lengths > 0, num / np.maximum(den, 1e-30), 0.5)

    if t >= 2:
        d = phi[:, 1:] - phi[:, :-1]
        prev = phi[:, :-1]
        hit = (np.abs(d) > DEFECT_THRESHOLD) & (np.arange(1, t)[None, :] < lengths[:, None])
        score = np.where(d > 0, np.where(prev < 0.5, 0.8, 0.3), np.where(prev > 0.7, 0.2, 0.5))
        nhit = hit.sum(axis=1)
        disc = np.where(nhit > 0, (score * hit).sum(axis=1) / np.maximum(nhit, 1), 0.5)
    else:
        disc = np.full(bsz, 0.5)
    carl = w["coherence"] * coh + w["cloud"] * cloud_v + w["discontinuity"] * disc
    return {"coherence": coh, "cloud": cloud_v, "discontinuity": disc, "carl": carl}


def _weights(weights: Mapping[str, float] | Any | None) -> dict[str, float]:
    if weights is None:
        return dict(DEFAULT_WEIGHTS)
    if not isinstance(weights, Mapping):  # e.g. engine.config.CarlWeights
        weights = {k: getattr(weights, k) for k in DEFAULT_WEIGHTS}
    unknown = set(weights) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValidationError(f"unknown CARL weight(s) {sorted(unknown)}",
                              hint="Weights are coherence, cloud and discontinuity.")
    return {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in weights.items()}}


def lowest_group_confidence(confidence: Any, window: int = DEEPCONF_WINDOW) -> float | None:
    """DeepConf's lowest group confidence of one trace (Fu et al. 2025): the minimum over every sliding window of
    ``window`` consecutive tokens of the window's mean token confidence; a trace shorter than the window is one
    group (its mean). None for an empty trace."""
    c = _vec(confidence)
    if window < 1:
        raise ValidationError(f"the DeepConf window must be ≥ 1 token, got {window}")
    if not c.size:
        return None
    if c.size <= window:
        return float(c.mean())
    cs = np.concatenate([[0.0], np.cumsum(c)])
    return float(((cs[window:] - cs[:-window]) / window).min())


SCORES = ("phi", "self_certainty", "neg_entropy", "logprob", "group_confidence")
"""The sequence scores, each under its own name (higher = more certain), from one sequence's per-token field:

* ``phi`` — mean Phi = 1 - mean H / log V (normalised entropy; an affine map of ``neg_entropy``);
* ``self_certainty`` — mean over tokens of KL(U ‖ P) in nats (Kang, Zhao & Song 2025, "Scalable Best-of-N
  Selection for Large Language Models via Self-Certainty"; Intuitor's ``self_certainty_from_logits`` without
  the constant -log V);
* ``neg_entropy`` — -mean H (nats);
* ``logprob`` — mean log p of the chosen tokens;
* ``group_confidence`` — DeepConf's lowest group confidence (:func:`lowest_group_confidence`).
"""


def sequence_scores(phi: Any, entropy: Any, selected_prob: Any, self_certainty: Any = None,
                    confidence: Any = None, *, window: int = DEEPCONF_WINDOW) -> dict[str, float | None]:
    """The :data:`SCORES` of one sequence (1-D per-token arrays). None where the sequence is empty or the
    input for that score is missing (no logits: no self-certainty; no top-k: no group confidence)."""
    p, h, q = _vec(phi), _vec(entropy), _vec(selected_prob)
    n = p.size
    mean = lambda a: float(a.mean()) if n else None  # noqa: E731
    with np.errstate(divide="ignore"):
        lp = np.log(q)
    sc = None if self_certainty is None else _vec(self_certainty)
    return {
        "phi": mean(p),
        "self_certainty": None if sc is None else mean(sc),
        "neg_entropy": None if not n else -float(h.mean()),
        "logprob": mean(lp),
        "group_confidence": None if confidence is None else lowest_group_confidence(confidence, window),
    }


def crystallizations(phi: Any) -> np.ndarray:
    """Positions k+1 (the token after the jump) where ΔPhi_k > +DEFECT_THRESHOLD."""
    return np.flatnonzero(delta_phi(phi) > DEFECT_THRESHOLD) + 1


def meltings(phi: Any) -> np.ndarray:
    """Positions k+1 (the token after the drop) where ΔPhi_k < -DEFECT_THRESHOLD."""
    return np.flatnonzero(delta_phi(phi) < -DEFECT_THRESHOLD) + 1


def surprisal(selected_prob: Any) -> np.ndarray:
    """Surprisal -log selected_prob in nats (+inf for a masked selected token)."""
    with np.errstate(divide="ignore"):
        return -np.log(_vec(selected_prob))


def kuramoto_r(phi: Any) -> float:
    """Kuramoto order parameter R = |mean(exp(iπ·Phi))|; 1 when all tokens share one Phi. Empty → 0."""
    p = _vec(phi)
    return float(abs(np.mean(np.exp(1j * math.pi * p)))) if p.size else 0.0


def crystallized_fraction(phi: Any) -> float:
    """Fraction of tokens with Phi ≥ SIGMA (0.0 when empty)."""
    p = _vec(phi)
    return float(np.mean(p >= SIGMA)) if p.size else 0.0


# ----------------------------------------------------------------------------------------------------------
# Torch batched rewards (what the trainer vectorises)
# ----------------------------------------------------------------------------------------------------------

def carl_components_torch(phi: Any, selected_prob: Any, mask: Any = None,
                          weights: Mapping[str, float] | None = None) -> dict[str, Any]:
    """:func:`carl_components` for torch tensors [B, T] (what the trainer calls): one host copy of the [B, T]
    field (tiny next to the [B, T, V] logits it came from), the one definition, [B] tensors back on the
    field's device in its float dtype."""
    import torch

    dev = phi.device
    dt = phi.dtype if phi.is_floating_point() else torch.float32
    host = carl_components(phi.detach().double().cpu().numpy(), selected_prob.detach().double().cpu().numpy(),
                           None if mask is None else mask.detach().cpu().numpy(), weights)
    return {k: torch.from_numpy(v).to(device=dev, dtype=dt) for k, v in host.items()}

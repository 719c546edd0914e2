"""The field object (:class:`PhiField`), its :class:`Snapshot` and :class:`CoherenceProbe`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from engine.errors import ProbeNonFiniteError, ProbeShapeError, ValidationError
from engine.probe.constants import DEEPCONF_TOPK, DEEPCONF_WINDOW, KAPPA, SIGMA
from engine.probe.kernel import _check_logits_shape, _is_torch, phi_from_entropy, token_scores
from engine.probe.sequence import (
    SCORES,
    _weights,
    carl_reward,
    cloud,
    coherence,
    crystallizations,
    crystallized_fraction,
    discontinuity,
    kuramoto_r,
    meltings,
    sequence_scores,
    surprisal,
)

# ----------------------------------------------------------------------------------------------------------
# The field object and the snapshot
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhiField:
    """The per-token field, always [B, T] (B = 1 for a single sequence): every metric is a reduction of it."""

    phi: np.ndarray
    entropy: np.ndarray
    selected_prob: np.ndarray
    token_ids: np.ndarray | None
    vocab_size: int
    self_certainty: np.ndarray | None = None
    """KL(U ‖ P) per token [B, T] (None on the entropy path: it needs the logits)."""
    confidence: np.ndarray | None = None
    """DeepConf's token confidence per token [B, T] (None without top-k or logits)."""

    @property
    def surprisal(self) -> np.ndarray:
        """-log selected_prob per token."""
        return surprisal(self.selected_prob).reshape(self.selected_prob.shape)

    @property
    def delta_phi(self) -> np.ndarray:
        """ΔPhi along each sequence, [B, T-1]."""
        return np.diff(self.phi, axis=1)

    @classmethod
    def from_logits(cls, logits: Any, token_ids: Any = None, *, allow_masked: bool = False,
                    backend: str = "auto", topk: int = DEEPCONF_TOPK) -> "PhiField":
        r = token_scores(logits, token_ids, allow_masked=allow_masked, backend=backend, topk=topk)
        names = ("phi", "entropy", "selected_prob", "self_certainty") + (("confidence",) if topk else ())
        arrs = {f: _host(r[f]) for f in names}
        ids_np = _host(r["token_ids"], np.int64)
        if arrs["phi"].ndim == 1:
            arrs = {f: a[None, :] for f, a in arrs.items()}
            ids_np = ids_np[None, :]
        return cls(**arrs, token_ids=ids_np, vocab_size=int(logits.shape[-1]))

    def scores(self, window: int = DEEPCONF_WINDOW) -> list[dict[str, float | None]]:
        """:func:`sequence_scores` of each sequence."""
        return [sequence_scores(self.phi[b], self.entropy[b], self.selected_prob[b],
                                None if self.self_certainty is None else self.self_certainty[b],
                                None if self.confidence is None else self.confidence[b], window=window)
                for b in range(self.phi.shape[0])]

    @classmethod
    def from_entropy(cls, entropy: Any, selected_logprob: Any, vocab_size: int) -> "PhiField":
        """The path without logits: pre-computed entropies (nats) and log-probs of the selected tokens."""
        ent, lp = _host(entropy), _host(selected_logprob)
        if ent.ndim not in (1, 2) or ent.shape != lp.shape:
            raise ProbeShapeError(f"entropy {list(ent.shape)} and selected log-probs {list(lp.shape)} must be "
                                  "the same [T] or [B, T] shape")
        if vocab_size < 2:
            raise ProbeShapeError(f"the vocabulary size must be at least 2, got {vocab_size}")
        if not (np.isfinite(ent).all() and not np.isnan(lp).any()):
            raise ProbeNonFiniteError("non-finite entropies or NaN log-probs")
        if ent.ndim == 1:
            ent, lp = ent[None, :], lp[None, :]
        phi = phi_from_entropy(ent, vocab_size)
        return cls(phi=phi, entropy=ent, selected_prob=np.exp(lp), token_ids=None, vocab_size=int(vocab_size))


def _host(a: Any, dtype: Any = np.float64) -> np.ndarray:
    if _is_torch(a):
        a = a.detach().cpu()
        a = a.double() if dtype == np.float64 else a
        a = a.numpy()
    return np.asarray(a, dtype=dtype)


@dataclass(frozen=True)
class Rewards:
    coherence: float
    cloud: float
    discontinuity: float
    carl: float

    def as_dict(self) -> dict[str, float]:
        return {"coherence": self.coherence, "cloud": self.cloud, "discontinuity": self.discontinuity,
                "carl": self.carl}


@dataclass(frozen=True)
class Snapshot:
    """What :meth:`CoherenceProbe.measure` returns: the field plus its reductions.

    Token statistics are over all tokens (flattened over the batch); rewards are per sequence
    (:attr:`per_sequence`) and their batch mean (:attr:`rewards`).
    """

    field: PhiField
    batched: bool
    per_sequence: tuple[Rewards, ...]
    rewards: Rewards
    shape: tuple[int, ...] = ()
    dtype: str = ""
    topk: int = DEEPCONF_TOPK
    window: int = DEEPCONF_WINDOW

    @property
    def sequence_scores(self) -> list[dict[str, float | None]]:
        """The :data:`SCORES` of each sequence (:func:`sequence_scores`)."""
        return self.field.scores(self.window)

    @property
    def scores(self) -> dict[str, float | None]:
        """Each of :data:`SCORES` per sequence, then averaged over the batch (None where a sequence has none)."""
        per = self.sequence_scores
        out: dict[str, float | None] = {}
        for k in SCORES:
            vals = [d[k] for d in per]
            out[k] = None if any(v is None for v in vals) or not vals else float(np.mean(vals))
        return out

    @property
    def phi(self) -> np.ndarray:
        """Per-token Phi flattened over the batch."""
        return self.field.phi.reshape(-1)

    @property
    def n_tokens(self) -> int:
        return int(self.field.phi.size)

    @property
    def vocab_size(self) -> int:
        return self.field.vocab_size

    def _stat(self, fn: Any, a: np.ndarray) -> float:
        return float(fn(a)) if a.size else float("nan")

    @property
    def phi_mean(self) -> float:
        return self._stat(np.mean, self.phi)

    @property
    def phi_std(self) -> float:
        """Population std of Phi over all tokens."""
        return self._stat(np.std, self.phi)

    @property
    def phi_min(self) -> float:
        return self._stat(np.min, self.phi)

    @property
    def phi_max(self) -> float:
        return self._stat(np.max, self.phi)

    @property
    def entropy_mean(self) -> float:
        """Mean entropy in nats over all tokens."""
        return self._stat(np.mean, self.field.entropy)

    @property
    def crystallized_fraction(self) -> float:
        return crystallized_fraction(self.phi)

    @property
    def surprisal_mean(self) -> float:
        return self._stat(np.mean, self.field.surprisal)

    @property
    def kuramoto_r(self) -> float:
        return kuramoto_r(self.phi)

    def crystallization_positions(self) -> list[list[int]]:
        return [crystallizations(row).tolist() for row in self.field.phi]

    def melting_positions(self) -> list[list[int]]:
        return [meltings(row).tolist() for row in self.field.phi]

    def to_dict(self) -> dict[str, Any]:
        """The contract's probe fields (CONTRACT.md §probe) plus carl's documented extras (docs/probe.md)."""
        cryst, melt = self.crystallization_positions(), self.melting_positions()
        sc, per_sc = self.scores, self.sequence_scores
        return {
            "n_tokens": self.n_tokens,
            "vocab_size": self.vocab_size,
            "phi_mean": self.phi_mean,
            "phi_std": self.phi_std,
            "phi_min": self.phi_min,
            "phi_max": self.phi_max,
            "entropy_mean": self.entropy_mean,
            "phi": self.phi.tolist(),
            "kappa": KAPPA,
            "sigma": SIGMA,
            "crystallized_fraction": self.crystallized_fraction,
            "rewards": self.rewards.as_dict(),
            # the intrinsic scores (engine.probe.SCORES), per sequence then averaged over the batch
            "self_certainty": sc["self_certainty"],
            "neg_entropy": sc["neg_entropy"],
            "logprob_mean": sc["logprob"],
            "group_confidence": sc["group_confidence"],
            "deepconf": {"topk": self.topk, "window": self.window},
            # extras
            "shape": list(self.shape),
            "dtype": self.dtype,
            "batch_size": int(self.field.phi.shape[0]) if self.batched else None,
            "surprisal_mean": self.surprisal_mean,
            "kuramoto_r": self.kuramoto_r,
            "crystallizations": sum(len(c) for c in cryst),
            "meltings": sum(len(m) for m in melt),
            "per_sequence": [{**r.as_dict(), "n_tokens": int(self.field.phi.shape[1]),
                              "crystallization_positions": c, "melting_positions": m, "scores": q}
                             for r, c, m, q in zip(self.per_sequence, cryst, melt, per_sc)],
        }


class CoherenceProbe:
    """Measure the Phi field of logits and the CARL reward on it.

    >>> snap = CoherenceProbe(vocab_size=32000).measure(logits)            # [T, V] or [B, T, V]
    >>> snap.rewards.carl, snap.phi_mean, snap.field.phi
    """

    def __init__(self, vocab_size: int | None = None, weights: Mapping[str, float] | None = None,
                 allow_masked: bool = False, backend: str = "auto", topk: int = DEEPCONF_TOPK,
                 window: int = DEEPCONF_WINDOW):
        if window < 1:
            raise ValidationError(f"the DeepConf window must be ≥ 1 token, got {window}")
        self.topk, self.window = int(topk), int(window)
        self.vocab_size = vocab_size
        self.backend = backend
        self.weights = _weights(weights)
        self.allow_masked = allow_masked

    def measure(self, logits: Any, token_ids: Any = None, *, allow_masked: bool | None = None) -> Snapshot:
        shape = tuple(int(s) for s in logits.shape)
        _check_logits_shape(shape)
        if self.vocab_size is not None and shape[-1] != self.vocab_size:
            raise ProbeShapeError(f"logits have V={shape[-1]}, the probe expects vocab_size={self.vocab_size}",
                                  context={"shape": list(shape), "vocab_size": self.vocab_size})
        masked = self.allow_masked if allow_masked is None else allow_masked
        fld = PhiField.from_logits(logits, token_ids, allow_masked=masked, backend=self.backend, topk=self.topk)
        return self._snapshot(fld, batched=len(shape) == 3, shape=shape, dtype=str(logits.dtype))

    def measure_entropy(self, entropy: Any, selected_logprob: Any) -> Snapshot:
        """The same snapshot from pre-computed entropies and selected log-probs (no logits)."""
        if self.vocab_size is None:
            raise ValidationError("the entropy path needs vocab_size", hint="CoherenceProbe(vocab_size=V)")
        fld = PhiField.from_entropy(entropy, selected_logprob, self.vocab_size)
        return self._snapshot(fld, batched=np.ndim(_host(entropy)) == 2, shape=tuple(fld.phi.shape), dtype="")

    def _snapshot(self, fld: PhiField, *, batched: bool, shape: tuple[int, ...], dtype: str) -> Snapshot:
        per = tuple(Rewards(**carl_reward(p, s, self.weights)) for p, s in zip(fld.phi, fld.selected_prob))
        mean = {k: float(np.mean([getattr(r, k) for r in per])) for k in ("coherence", "cloud", "discontinuity",
                                                                          "carl")}
        return Snapshot(field=fld, batched=batched, per_sequence=per, rewards=Rewards(**mean), shape=shape,
                        dtype=dtype, topk=self.topk if fld.confidence is not None else 0, window=self.window)

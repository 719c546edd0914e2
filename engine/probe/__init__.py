"""The coherence probe: the per-token Phi field of a model's logits and the CARL reward built on it.

Definitions (each formula lives once, in the function that computes it):

* per token ``p = softmax(logits)``, ``H = -Σ p·log p`` (nats, ``0·log 0 = 0``), **Phi = 1 - H / log V** with
  ``V`` the full last dimension, ``selected_prob = p[token]`` (the given token, else the argmax).
* constants :data:`KAPPA` = 64/3, :data:`SIGMA` = 3/16, :data:`DEFECT_THRESHOLD` = 0.03, horizon T* = KAPPA·d.
* :func:`carl_components` (batched: cloud, multiscale coherence, discontinuity, carl — the one definition that
  :func:`cloud`, :func:`coherence`, :func:`discontinuity`, :func:`carl_reward` and the trainer's
  :func:`carl_components_torch` use),
  :func:`crystallizations` / :func:`meltings`, :func:`surprisal`, :func:`kuramoto_r`.

The logits kernel (H = log Σe − Σe·z / Σe over z = x − max, one pass) has two backends of the same formula: numpy
(``_numpy_rows``, so the CLI never imports torch) and torch (``_token_stats_torch``, on the tensor's device; the
trainer's reward and generation capture call it too); tests check they agree. It works on row chunks of about a MiB, in float32 for 16/32-bit inputs (float64 for float64
inputs): one read of the input, two cache-resident scratch rows, never a float64 (or any) copy of ``[T, V]``.
Torch tensors stay on their device; only the per-token vectors ``[B, T]`` come back to the host.
numpy is the only import at module level; torch and safetensors are imported where they are needed.

The package, one way (each module imports only those above it): :mod:`~engine.probe.constants`,
:mod:`~engine.probe.kernel` (the per-token kernel), :mod:`~engine.probe.sequence` (per-sequence reductions),
:mod:`~engine.probe.field` (PhiField, Snapshot, CoherenceProbe), :mod:`~engine.probe.files` (logits files).
Every name is re-exported here: callers import from ``engine.probe``.
"""

from __future__ import annotations

from engine.probe.constants import (  # noqa: F401
    DEEPCONF_TOPK,
    DEEPCONF_WINDOW,
    DEFAULT_WEIGHTS,
    DEFECT_THRESHOLD,
    KAPPA,
    MAX_SCALES,
    SIGMA,
    horizon,
)
from engine.probe.kernel import (  # noqa: F401
    phi_from_entropy,
    phi_from_logits,
    token_scores,
    token_stats,
    _CHUNK_ELEMS_CPU,
    _CHUNK_ELEMS_CUDA,
    _CHUNK_ELEMS_TORCH_CPU,
    _FIELDS,
    _MASK_FLOOR,
    _MAX_THREADS,
    _NumpyOps,
    _THREAD_MIN_ELEMS,
    _TorchOps,
    _check_logits_shape,
    _check_token_range,
    _check_tokens,
    _cpu_threads,
    _describe_row,
    _is_torch,
    _kernel_rows,
    _nonfinite_error,
    _null_ctx,
    _numpy_via_torch,
    _run_kernel,
    _token_stats_torch,
)
from engine.probe.sequence import (  # noqa: F401
    SCORES,
    carl_components,
    carl_components_torch,
    carl_reward,
    cloud,
    coherence,
    crystallizations,
    crystallized_fraction,
    delta_phi,
    discontinuity,
    kuramoto_r,
    lowest_group_confidence,
    meltings,
    sequence_scores,
    surprisal,
    _vec,
    _weights,
)
from engine.probe.field import (  # noqa: F401
    CoherenceProbe,
    PhiField,
    Rewards,
    Snapshot,
    _host,
)
from engine.probe.files import (  # noqa: F401
    LOGITS_SUFFIXES,
    load_logits_file,
    _read_arrays,
    _read_safetensors,
)

__all__ = [
    "DEEPCONF_TOPK",
    "DEEPCONF_WINDOW",
    "DEFAULT_WEIGHTS",
    "DEFECT_THRESHOLD",
    "KAPPA",
    "MAX_SCALES",
    "SIGMA",
    "horizon",
    "phi_from_entropy",
    "phi_from_logits",
    "token_scores",
    "token_stats",
    "SCORES",
    "carl_components",
    "carl_components_torch",
    "carl_reward",
    "cloud",
    "coherence",
    "crystallizations",
    "crystallized_fraction",
    "delta_phi",
    "discontinuity",
    "kuramoto_r",
    "lowest_group_confidence",
    "meltings",
    "sequence_scores",
    "surprisal",
    "CoherenceProbe",
    "PhiField",
    "Rewards",
    "Snapshot",
    "LOGITS_SUFFIXES",
    "load_logits_file",
]

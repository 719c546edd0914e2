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
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from engine.errors import ProbeNonFiniteError, ProbeShapeError, ValidationError

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

# Masked mode: -inf logits become this far below the row max; exp() of it is exactly 0 in float32 and
# float64, and 0·(-1e4) = 0, so masked entries contribute nothing to H and need no separate pass.
_MASK_FLOOR = -1.0e4
# Elements per row chunk: 2^18 float32 = 1 MiB per scratch buffer (fits L2/L3 with the input chunk).
_CHUNK_ELEMS_CPU = 1 << 18
_CHUNK_ELEMS_CUDA = 1 << 26
# torch on CPU: bigger chunks (16 MiB), so its thread pool is entered a few dozen times, not once per row.
_CHUNK_ELEMS_TORCH_CPU = 1 << 22
# Inputs at least this large (elements) run on up to _MAX_THREADS threads.
_THREAD_MIN_ELEMS = 1 << 22
_MAX_THREADS = 8


def horizon(d: int | float) -> float:
    """The coherence horizon T* = KAPPA·d for a model of width ``d``."""
    return KAPPA * float(d)


# ----------------------------------------------------------------------------------------------------------
# The per-token kernel: logits → (phi, entropy, selected_prob, selected token)
# ----------------------------------------------------------------------------------------------------------

def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _check_logits_shape(shape: Sequence[int]) -> None:
    if len(shape) not in (2, 3):
        raise ProbeShapeError(f"logits must be [T, V] or [B, T, V], got rank {len(shape)} {list(shape)}",
                              context={"shape": list(shape)})
    if shape[-1] < 2:
        raise ProbeShapeError(f"the vocabulary dimension must be at least 2, got V={shape[-1]}",
                              hint="Phi = 1 - H/log V needs V ≥ 2.", context={"shape": list(shape)})


def _check_tokens(tokens_shape: Sequence[int], logits_shape: Sequence[int]) -> None:
    if tuple(tokens_shape) != tuple(logits_shape[:-1]):
        raise ProbeShapeError(
            f"tokens {list(tokens_shape)} do not match logits {list(logits_shape)} "
            f"(expected {list(logits_shape[:-1])})",
            context={"ids_shape": list(tokens_shape), "logits_shape": list(logits_shape)})


def _nonfinite_error(row: int, lead_shape: Sequence[int], what: str) -> ProbeNonFiniteError:
    where = [int(i) for i in np.unravel_index(row, tuple(lead_shape))] if lead_shape else [row]
    return ProbeNonFiniteError(f"non-finite logits ({what}) at position {where}",
                               context={"position": where, "value": what})


def _describe_row(row: Any) -> str:
    """Name the worst non-finite value in one logits row (used only on the error path)."""
    r = np.asarray(row, dtype=np.float64) if not _is_torch(row) else row.double().cpu().numpy()
    if np.isnan(r).any():
        return "nan"
    if np.isposinf(r).any():
        return "+inf"
    if np.isneginf(r).all():
        return "all -inf"
    return "-inf"


# The kernel is written once (:func:`_kernel_rows`) over a small backend shim: :class:`_NumpyOps` (the CLI path,
# no torch import) and :class:`_TorchOps` (the tensor's own device). Each op is the one call its library has for
# it; the formulas, the chunking and the non-finite handling live in the kernel only.

_FIELDS = ("entropy", "selected_prob", "token_ids", "lse", "self_certainty", "confidence")


class _NumpyOps:
    """numpy ops of the kernel (in place into preallocated scratch rows; sums are numpy's pairwise sums)."""

    name = "numpy"

    @staticmethod
    def work(dtype: Any) -> Any:
        return np.float64 if dtype == np.float64 else np.float32

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: Any, like: Any) -> np.ndarray:
        return np.empty(shape, dtype=np.int64 if dtype == "int" else dtype)

    @staticmethod
    def copy_into(dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src, casting="unsafe")

    @staticmethod
    def argmax_rows(c: np.ndarray) -> np.ndarray:
        return c.argmax(axis=1)  # first maximum; a NaN row yields the NaN's index

    @staticmethod
    def max_rows(c: np.ndarray) -> np.ndarray:
        return c.max(axis=1)  # propagates NaN

    @staticmethod
    def min_rows(c: np.ndarray) -> np.ndarray:
        return c.min(axis=1)

    @staticmethod
    def gather(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return a[np.arange(a.shape[0]), idx]

    @staticmethod
    def sum_rows(a: np.ndarray) -> np.ndarray:
        return a.sum(axis=1, dtype=a.dtype)

    @staticmethod
    def sub_into(c: np.ndarray, m: np.ndarray, out: np.ndarray) -> None:
        np.subtract(c, m[:, None], out=out)

    @staticmethod
    def clamp_min_(z: np.ndarray, lo: float) -> None:
        np.maximum(z, lo, out=z)

    @staticmethod
    def exp_into(z: np.ndarray, out: np.ndarray) -> None:
        np.exp(z, out=out)

    @staticmethod
    def mul_(a: np.ndarray, b: np.ndarray) -> None:
        np.multiply(a, b, out=a)

    @staticmethod
    def topk_sum(z: np.ndarray, k: int) -> np.ndarray:
        v = z.shape[1]
        return np.partition(z, v - k, axis=1)[:, v - k:].sum(axis=1, dtype=z.dtype)

    @staticmethod
    def hp(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float64)

    log = staticmethod(np.log)
    isfinite = staticmethod(np.isfinite)
    where = staticmethod(np.where)


class _TorchOps:
    """torch ops of the kernel, on the input's device (imported only when torch input or backend='torch')."""

    name = "torch"

    def __init__(self) -> None:
        import torch

        self.t = torch
        self.log, self.isfinite, self.where = torch.log, torch.isfinite, torch.where

    def work(self, dtype: Any) -> Any:
        return self.t.float64 if dtype == self.t.float64 else self.t.float32

    def empty(self, shape: tuple[int, ...], dtype: Any, like: Any) -> Any:
        return self.t.empty(shape, dtype=self.t.int64 if dtype == "int" else dtype, device=like.device)

    @staticmethod
    def copy_into(dst: Any, src: Any) -> None:
        dst.copy_(src)

    def argmax_rows(self, c: Any) -> Any:
        return self.t.argmax(c, dim=1)

    @staticmethod
    def max_rows(c: Any) -> Any:
        return c.amax(dim=1)

    @staticmethod
    def min_rows(c: Any) -> Any:
        return c.amin(dim=1)

    @staticmethod
    def gather(a: Any, idx: Any) -> Any:
        return a.gather(1, idx[:, None])[:, 0]

    @staticmethod
    def sum_rows(a: Any) -> Any:
        return a.sum(dim=1)

    def sub_into(self, c: Any, m: Any, out: Any) -> None:
        self.t.sub(c, m[:, None], out=out)

    @staticmethod
    def clamp_min_(z: Any, lo: float) -> None:
        z.clamp_(min=lo)

    def exp_into(self, z: Any, out: Any) -> None:
        self.t.exp(z, out=out)

    @staticmethod
    def mul_(a: Any, b: Any) -> None:
        a.mul_(b)

    def topk_sum(self, z: Any, k: int) -> Any:
        return self.t.topk(z, k, dim=1, sorted=False).values.sum(dim=1)

    @staticmethod
    def hp(a: Any) -> Any:
        return a  # torch keeps the work dtype (float32, float64 for float64 input) on the device


def _kernel_rows(ops: Any, x: Any, tokens: Any, allow_masked: bool, k_top: int, lo: int, hi: int,
                 out: dict[str, Any], z_buf: Any, e_buf: Any) -> None:
    """THE per-token kernel: fill rows [lo, hi) of ``out`` from 2-D ``x`` [N, V], one scratch chunk at a time.

    Per chunk: m = max (argmax without tokens) → z = x - m → Σz (self-certainty), Σ top-k z (DeepConf) → e = exp(z)
    → s = Σe, e[token] → e·z in place → Σe·z. With log s the log-normaliser of z:
    H = log s - Σe·z / s; p[token] = e[token] / s; lse = m + log s; self-certainty KL(U‖P) = log s - Σz/V - log V
    (+inf when a masked entry has p = 0); DeepConf's token confidence -mean_top-k log p = log s - Σ_top-k z / k.
    A non-finite row (NaN, +inf, all -inf, an unmasked -inf) leaves NaN entropy; the caller raises on it.
    """
    v = x.shape[1]
    log_v = math.log(v)
    rows = z_buf.shape[0]
    for a in range(lo, hi, rows):
        b = min(hi, a + rows)
        c = x[a:b]
        z, e = z_buf[:b - a], e_buf[:b - a]
        if c.dtype != z.dtype:  # half precision / ints: cast into the scratch row (the input is never written)
            ops.copy_into(z, c)
            c = z
        if tokens is None:
            tok = ops.argmax_rows(c)
            m = ops.gather(c, tok)
        else:
            tok = tokens[a:b]
            m = ops.max_rows(c)
        ops.sub_into(c, m, z)  # z = x - max ≤ 0
        if allow_masked:
            ops.clamp_min_(z, _MASK_FLOOR)
        want_sc = "self_certainty" in out
        masked = ops.min_rows(z) <= _MASK_FLOOR if allow_masked and want_sc else None
        zsum = ops.sum_rows(z) if want_sc else None
        top = ops.topk_sum(z, k_top) if k_top else None
        ops.exp_into(z, e)
        s = ops.sum_rows(e)
        sel = ops.gather(e, tok)
        ops.mul_(e, z)  # e·z (0·(-inf) = NaN flags an unmasked -inf)
        ez = ops.sum_rows(e)
        s, ez, sel, m = (ops.hp(t) for t in (s, ez, sel, m))
        log_s = ops.log(s)
        h = log_s - ez / s
        out["entropy"][a:b] = ops.where(ops.isfinite(m), h, math.nan)
        out["selected_prob"][a:b] = sel / s
        out["token_ids"][a:b] = tok
        out["lse"][a:b] = m + log_s
        if want_sc:
            sc = log_s - ops.hp(zsum) / v - log_v
            out["self_certainty"][a:b] = ops.where(masked, math.inf, sc) if masked is not None else sc
        if k_top:
            out["confidence"][a:b] = log_s - ops.hp(top) / k_top


def _cpu_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        n = os.cpu_count() or 1
    return max(1, min(n, _MAX_THREADS))


def _run_kernel(ops: Any, x: Any, tokens: Any, allow_masked: bool, k_top: int, *,
                check: bool = True, self_certainty: bool = True) -> dict[str, Any]:
    """The kernel over 2-D ``x`` [N, V] with ``ops``' scratch chunks; per-token outputs [N] (numpy: float64; torch:
    the work dtype on the input's device). Large numpy inputs run on a few threads (numpy ufuncs release the GIL;
    one pair of scratch rows each; the result does not depend on the split). ``check=False`` skips the one
    host sync (a non-finite row then reads as NaN entropy instead of raising); ``self_certainty=False`` skips
    that score's extra row sum (the trainer's generation capture does not use it)."""
    n, v = x.shape
    work = ops.work(x.dtype)
    out_dt = np.float64 if ops.name == "numpy" else work
    out = {f: ops.empty((n,), "int" if f == "token_ids" else out_dt, x)
           for f in _FIELDS if (f != "confidence" or k_top) and (f != "self_certainty" or self_certainty)}
    if ops.name == "numpy":
        chunk = _CHUNK_ELEMS_CPU
    else:
        chunk = _CHUNK_ELEMS_CUDA if x.device.type != "cpu" else _CHUNK_ELEMS_TORCH_CPU
    threads = _cpu_threads() if ops.name == "numpy" and n * v >= _THREAD_MIN_ELEMS and n >= 2 else 1
    bounds = [n * i // (threads * 4 if threads > 1 else 1) for i in range((threads * 4 if threads > 1 else 1) + 1)]
    spans = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]

    def span(lo: int, hi: int) -> None:
        rows = max(1, min(hi - lo, chunk // v))
        _kernel_rows(ops, x, tokens, allow_masked, k_top, lo, hi, out,
                     ops.empty((rows, v), work, x), ops.empty((rows, v), work, x))

    ctx = np.errstate(invalid="ignore", over="ignore") if ops.name == "numpy" else _null_ctx(ops)
    with ctx:
        if len(spans) <= 1:
            for lo, hi in spans:
                span(lo, hi)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="carl-probe") as pool:
                for f in [pool.submit(span, lo, hi) for lo, hi in spans]:
                    f.result()
    ent = out["entropy"]
    if check and n:
        finite = ops.isfinite(ent)
        if not bool(finite.all()):  # the one host sync (torch)
            i = int(np.argmin(finite)) if ops.name == "numpy" else int(ops.t.argmin(finite.to(ops.t.int8)))
            raise _nonfinite_error(i, (), _describe_row(x[i]))
    # rounding can leave ±1 ulp outside the ranges: 0 ≤ H ≤ log V, KL ≥ 0, confidence ≥ 0
    if ops.name == "numpy":
        np.clip(ent, 0.0, math.log(v), out=ent)
        if self_certainty:
            np.maximum(out["self_certainty"], 0.0, out=out["self_certainty"])
        if k_top:
            np.maximum(out["confidence"], 0.0, out=out["confidence"])
    else:
        ent.clamp_(0.0, math.log(v))
        if self_certainty:
            out["self_certainty"].clamp_(min=0.0)
        if k_top:
            out["confidence"].clamp_(min=0.0)
    return out


def _null_ctx(ops: Any) -> Any:
    return ops.t.no_grad()


def _numpy_via_torch(x: np.ndarray, tokens: np.ndarray | None, allow_masked: bool, k_top: int,
                     self_certainty: bool = True) -> dict[str, Any]:
    """The torch CPU kernel on a numpy array (zero-copy view; the array is never written); numpy back."""
    import warnings

    import torch

    with warnings.catch_warnings():  # read-only (memory-mapped) arrays: torch warns, we only read
        warnings.simplefilter("ignore", UserWarning)
        tx = torch.from_numpy(x)
    tt = None if tokens is None else torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64))
    out = _run_kernel(_TorchOps(), tx, tt, allow_masked, k_top, self_certainty=self_certainty)
    return {k: (t.numpy() if k == "token_ids" else t.double().numpy()) for k, t in out.items()}


def _token_stats_torch(x: Any, tokens: Any, allow_masked: bool, *, check: bool = True,
                       with_lse: bool = False) -> tuple[Any, ...]:
    """The kernel on a 2-D torch ``x`` [N, V] on its own device: (entropy, selected_prob, token ids) tensors [N]
    (what the trainer's generation capture calls). ``check=False`` skips the one host sync (a non-finite row
    then reads as NaN entropy instead of raising); ``with_lse`` also returns each row's log-normaliser
    ``log Σ exp x`` (so one logit read later gives that token's probability, ``exp(x[t] - lse)``)."""
    if tokens is not None:
        tokens = tokens.to(device=x.device, dtype=__import__("torch").int64)
    out = _run_kernel(_TorchOps(), x, tokens, allow_masked, 0, check=check, self_certainty=False)
    res = (out["entropy"], out["selected_prob"], out["token_ids"])
    return (*res, out["lse"]) if with_lse else res


DEEPCONF_TOPK: int = 20
"""DeepConf's k: token confidence is the negative mean log-probability of the k most likely tokens (Fu et al. 2025)."""
DEEPCONF_WINDOW: int = 2048
"""DeepConf's group (sliding-window) size in tokens; a trace shorter than the window is one group."""


def token_scores(logits: Any, token_ids: Any = None, *, allow_masked: bool = False, backend: str = "auto",
                 topk: int = 0, self_certainty: bool = True) -> dict[str, Any]:
    """Per-token scores of ``logits`` [T, V] or [B, T, V], each of shape ``logits.shape[:-1]``, from one pass:

    ``phi`` (1 - H/log V), ``entropy`` H (nats), ``selected_prob`` p[token], ``token_ids`` (given, else the
    argmax, first maximum), ``self_certainty`` KL(U ‖ P) = logsumexp(z) - mean(z) - log V (nats; Kang, Zhao &
    Song 2025; +inf where a masked entry has p = 0) and, when ``topk`` > 0, ``confidence``: DeepConf's token
    confidence -1/k Σ_{j ≤ k} log p_(j) over the k most likely tokens (k capped at V).
    ``self_certainty=False`` leaves that score out (one row sum fewer: what :func:`token_stats` asks for).

    numpy input → float64 numpy arrays; torch input → tensors on the logits' device (float32, or float64 for
    float64 logits). Non-finite logits raise ``carl.probe.nonfinite`` unless ``allow_masked`` (then -inf is
    probability 0 and V stays the full last dimension; NaN and +inf are still errors). ``backend`` for numpy
    input: ``"numpy"`` = ``"auto"`` (chunked numpy on a few threads) or ``"torch"`` (the same kernel on torch's
    CPU ops, zero-copy views; docs/probe.md says when it pays). Torch input always runs on its own device.
    """
    shape = tuple(int(s) for s in logits.shape)
    _check_logits_shape(shape)
    v = shape[-1]
    lead = shape[:-1]
    torch_in = _is_torch(logits)
    if token_ids is not None:
        if not _is_torch(token_ids):
            token_ids = np.asarray(token_ids)
        tshape = tuple(int(s) for s in token_ids.shape)
        _check_tokens(tshape, shape)
        tok = token_ids.reshape(-1) if torch_in or _is_torch(token_ids) else np.asarray(token_ids).reshape(-1)
        if torch_in and not _is_torch(tok):
            import torch

            tok = torch.as_tensor(np.asarray(tok), device=logits.device)
        if not torch_in and _is_torch(tok):
            tok = tok.detach().cpu().numpy()
        _check_token_range(tok, v)
        if torch_in:
            tok = tok.to(device=logits.device, dtype=__import__("torch").int64)
    else:
        tok = None
    if backend not in ("auto", "numpy", "torch"):
        raise ValidationError(f"unknown probe backend {backend!r}", hint="Use 'auto', 'numpy' or 'torch'.")
    if topk < 0:
        raise ValidationError(f"top-k must be ≥ 0, got {topk}")
    k_top = min(int(topk), v)
    x = logits.detach() if torch_in else (logits if isinstance(logits, np.ndarray) else np.asarray(logits))
    use_torch = torch_in or backend == "torch"
    contiguous = x.is_contiguous() if torch_in else x.flags.c_contiguous
    # 2-D slabs the kernel walks row by row: one flat view when contiguous, else one per sequence (no copy)
    slabs = [x.reshape(-1, v)] if (x.ndim == 2 or contiguous) else [x[b] for b in range(x.shape[0])]
    rows_per = slabs[0].shape[0]
    parts = []
    for k, slab in enumerate(slabs):
        stok = None if tok is None else tok[k * rows_per:(k + 1) * rows_per]
        try:
            if use_torch and not torch_in:
                parts.append(_numpy_via_torch(slab, stok, allow_masked, k_top, self_certainty))
            elif use_torch:
                parts.append(_run_kernel(_TorchOps(), slab, stok, allow_masked, k_top, self_certainty=self_certainty))
            else:
                parts.append(_run_kernel(_NumpyOps(), slab, stok, allow_masked, k_top, self_certainty=self_certainty))
        except ProbeNonFiniteError as exc:  # re-address the flat row as [t] or [b, t]
            raise _nonfinite_error(k * rows_per + exc.context["position"][0], lead, exc.context["value"]) from None
    if len(parts) == 1:
        res = parts[0]
    elif torch_in:
        import torch

        res = {f: torch.cat([p[f] for p in parts]) for f in parts[0]}
    else:
        res = {f: np.concatenate([p[f] for p in parts]) for f in parts[0]}
    res.pop("lse")
    res = {f: a.reshape(lead) for f, a in res.items()}
    res["phi"] = 1.0 - res["entropy"] / math.log(v)
    return res


def token_stats(logits: Any, token_ids: Any = None, *, allow_masked: bool = False,
                backend: str = "auto") -> tuple[Any, Any, Any, Any]:
    """Per-token ``(phi, entropy, selected_prob, token_ids)`` of ``logits`` [T, V] or [B, T, V]
    (:func:`token_scores` without the other scores; same dtypes, devices and errors)."""
    r = token_scores(logits, token_ids, allow_masked=allow_masked, backend=backend, self_certainty=False)
    return r["phi"], r["entropy"], r["selected_prob"], r["token_ids"]


def _check_token_range(tok: Any, v: int) -> None:
    if _is_torch(tok):
        if tok.is_floating_point() or tok.dtype == __import__("torch").bool:
            raise ProbeShapeError(f"token ids must be integers, got {tok.dtype}")
        lo, hi = (int(tok.min()), int(tok.max())) if tok.numel() else (0, 0)
    else:
        if not np.issubdtype(tok.dtype, np.integer):
            raise ProbeShapeError(f"token ids must be integers, got {tok.dtype}",
                                  context={"dtype": str(tok.dtype)})
        lo, hi = (int(tok.min()), int(tok.max())) if tok.size else (0, 0)
    if lo < 0 or hi >= v:
        raise ProbeShapeError(f"token id out of range [0, {v}): min {lo}, max {hi}",
                              context={"vocab_size": v, "min": lo, "max": hi})


def phi_from_logits(logits: Any, *, allow_masked: bool = False, backend: str = "auto") -> tuple[Any, Any]:
    """``(phi, entropy)`` per token: Phi = 1 - H / log V, H = -Σ softmax·log softmax in nats (numpy or torch)."""
    phi, ent, _, _ = token_stats(logits, allow_masked=allow_masked, backend=backend)
    return phi, ent


def phi_from_entropy(entropy: Any, vocab_size: int) -> Any:
    """Phi = 1 - H / log V from pre-computed entropies (nats); works on numpy arrays and torch tensors."""
    return 1.0 - entropy / math.log(vocab_size)


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


# ----------------------------------------------------------------------------------------------------------
# Files: .npy / .npz / .safetensors (used by `carl --batch probe` and the probe panel)
# ----------------------------------------------------------------------------------------------------------

LOGITS_SUFFIXES = (".npy", ".npz", ".safetensors")


def load_logits_file(path: str | Path, tokens_path: str | Path | None = None) -> tuple[Any, Any]:
    """Read ``(logits, tokens)`` from a .npy ([T, V] / [B, T, V], memory-mapped), .npz or .safetensors file
    (keys ``logits`` and optional ``tokens``). ``tokens_path`` (.npy/.npz/.safetensors/.json) overrides the
    file's own tokens. bfloat16 safetensors come back as a torch tensor. Errors: ``carl.validation``."""
    p = Path(path).expanduser()
    arrays = _read_arrays(p, role="logits")
    if "logits" not in arrays:
        raise ValidationError(f"{p.name} has no 'logits' array (keys: {sorted(arrays)})",
                              hint="Save the logits under the key 'logits' (and token ids under 'tokens').",
                              context={"path": str(p), "keys": sorted(arrays)})
    logits, tokens = arrays["logits"], arrays.get("tokens")
    if tokens_path is not None:
        tp = Path(tokens_path).expanduser()
        tarr = _read_arrays(tp, role="tokens")
        if "tokens" in tarr:
            tokens = tarr["tokens"]
        elif len(tarr) == 1:
            tokens = next(iter(tarr.values()))
        else:
            raise ValidationError(f"{tp.name} holds several arrays and none is named 'tokens'",
                                  hint="Name the token-id array 'tokens'.", context={"keys": sorted(tarr)})
    return logits, tokens


def _read_arrays(p: Path, *, role: str) -> dict[str, Any]:
    suffix = p.suffix.lower()
    hint = "Give a .npy ([T, V] or [B, T, V]), .npz or .safetensors file with a 'logits' array."
    if role == "tokens":
        hint = "Give token ids as .npy, .npz / .safetensors (key 'tokens') or a JSON list."
    if not p.exists():
        raise ValidationError(f"{role} file not found: {p}", hint=hint, context={"path": str(p)})
    if not p.is_file():
        raise ValidationError(f"{role} path is not a file: {p}", hint=hint, context={"path": str(p)})
    allowed = LOGITS_SUFFIXES + ((".json",) if role == "tokens" else ())
    if suffix not in allowed:
        raise ValidationError(f"unsupported {role} file type {suffix or '(none)'!r}: {p.name}", hint=hint,
                              context={"path": str(p)})
    try:
        if suffix == ".npy":
            return {role: np.load(p, mmap_mode="r", allow_pickle=False)}
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if suffix == ".json":
            import json

            return {role: np.asarray(json.loads(p.read_text()), dtype=np.int64)}
        return _read_safetensors(p)
    except ValidationError:
        raise
    except Exception as exc:  # unreadable / corrupt / wrong format: never a traceback
        raise ValidationError(f"cannot read {role} file {p.name}: {type(exc).__name__}: {exc}", hint=hint,
                              context={"path": str(p)}) from None


def _read_safetensors(p: Path) -> dict[str, Any]:
    from safetensors import safe_open

    out: dict[str, Any] = {}
    with safe_open(str(p), framework="np") as f:
        keys = list(f.keys())
    for k in keys:
        try:
            with safe_open(str(p), framework="np") as f:
                out[k] = f.get_tensor(k)
        except Exception:  # e.g. bfloat16, which numpy cannot hold: read that one through torch
            with safe_open(str(p), framework="pt") as f:
                out[k] = f.get_tensor(k)
    return out

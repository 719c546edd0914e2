"""The per-token kernel: logits → (phi, entropy, selected_prob, selected token), on numpy or torch.

numpy is the only import at module level; torch is imported where it is needed.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from engine.errors import ProbeNonFiniteError, ProbeShapeError, ValidationError

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

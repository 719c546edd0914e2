"""Memory budgets for everything that turns logits into a per-token field.

A forward over ``N`` sequences of ``T`` tokens with a vocabulary of ``V`` produces ``N·T·V`` logits: at
``lora-7b``'s eval (64 × ~700 × 151,936) that is ≈ 27 GB of float32 before any softmax. carl never holds that:
sequences go through the model in chunks whose logits fit ``compute.logits_budget_mb`` and only per-token
scalars (phi, selected probability, entropy) are kept.

* :func:`budget_mb` — the budget in force: the configured value, else a default per device
  (CPU and MPS :data:`CPU_DEFAULT_MB`; CUDA an eighth of the GPU's memory, between
  :data:`CUDA_MIN_MB` and :data:`CUDA_MAX_MB`).
* :func:`bytes_per_position` — what one position of logits costs while its field is computed: the model's
  output dtype plus :data:`WORK_COPIES` float32 working copies of the vocabulary row (the float32 cast,
  the log-softmax exponentiated in place, the entropy terms, and one spare for the allocator).
* :func:`plan_chunks` — consecutive row groups (and, for a row longer than the budget allows, position
  ranges within it) whose logits fit the budget.
* :func:`oom_guard` — an out-of-memory inside becomes ``carl.resource.oom`` (exit 1) whose hint names the
  budget to lower.

No torch import at module level: the budget logic is plain arithmetic.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from engine.errors import ResourceOOM

CPU_DEFAULT_MB = 512
CUDA_MIN_MB = 512
CUDA_MAX_MB = 8192
WORK_COPIES = 4  # float32 [.., V] tensors alive at once while phi/entropy/selected are computed
MIN_BUDGET_MB = 16


def device_of(model: Any) -> str:
    try:
        return str(next(model.parameters()).device.type)
    except (StopIteration, AttributeError):
        return "cpu"


def default_budget_mb(device: str) -> int:
    """The default logits budget on ``device`` (``cpu``, ``mps``, ``cuda`` or ``cuda:N``)."""
    if device.startswith("cuda"):
        try:
            import torch

            idx = torch.device(device).index or 0
            total = torch.cuda.get_device_properties(idx).total_memory / 2**20
            return int(min(CUDA_MAX_MB, max(CUDA_MIN_MB, total / 8)))
        except Exception:  # no driver / no device: the floor
            return CUDA_MIN_MB
    return CPU_DEFAULT_MB


def budget_mb(configured: float | None, device: str) -> float:
    """``compute.logits_budget_mb`` when set (carl.yaml allows ≥ MIN_BUDGET_MB; the library takes any positive
    value), else the device default."""
    if configured is not None:
        if not configured > 0:
            raise ValueError(f"a logits budget must be positive, got {configured}")
        return configured
    return default_budget_mb(device)


def budget_from(cfg: Any, device: str) -> float:
    """The budget of a carl Config (or None: the default) on ``device``."""
    value = getattr(getattr(cfg, "compute", None), "logits_budget_mb", None) if cfg is not None else None
    return budget_mb(value, device)


def vocab_size(model: Any) -> int:
    """V as the model's output layer produces it (PEFT models included)."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(emb, "weight", None)
    if weight is not None and getattr(weight, "ndim", 0) == 2:
        return int(weight.shape[0])
    cfg = getattr(model, "config", None)
    text = getattr(cfg, "get_text_config", None)
    cfg = text() if callable(text) else cfg
    return int(getattr(cfg, "vocab_size", 0) or 1)


def output_bytes(model: Any) -> int:
    try:
        return int(next(model.parameters()).element_size())
    except (StopIteration, AttributeError):
        return 4


def bytes_per_position(vocab: int, out_bytes: int = 4) -> int:
    """Peak bytes one position's logits cost while its field is computed."""
    return int(vocab) * (int(out_bytes) + 4 * WORK_COPIES)


def positions_per_chunk(budget: float, vocab: int, out_bytes: int = 4) -> int:
    """How many positions of logits fit ``budget`` MB (at least 1)."""
    return max(1, int(budget * 2**20) // bytes_per_position(vocab, out_bytes))


def plan_chunks(lengths: Sequence[int], cap: int) -> list[tuple[list[int], int, int]]:
    """Consecutive groups of rows whose ``rows × longest`` fits ``cap`` positions: ``[(rows, lo, hi)]`` where
    ``lo:hi`` is the range of positions computed (``0:longest`` for a group; a row longer than ``cap`` is split
    into several ``(row, lo, hi)`` pieces of at most ``cap`` positions)."""
    out: list[tuple[list[int], int, int]] = []
    group: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        n = max(1, int(n))
        if n > cap:
            if group:
                out.append((group, 0, longest))
                group, longest = [], 0
            out += [([i], lo, min(n, lo + cap)) for lo in range(0, n, cap)]
            continue
        if group and (len(group) + 1) * max(longest, n) > cap:
            out.append((group, 0, longest))
            group, longest = [], 0
        group.append(i)
        longest = max(longest, n)
    if group:
        out.append((group, 0, longest))
    return out


def generation_batch(budget: float, vocab: int, out_bytes: int = 4, *, limit: int = 64) -> int:
    """Prompts decoded together so one decoding step's scores (and the samplers' copies) fit the budget."""
    return max(1, min(limit, positions_per_chunk(budget, vocab, out_bytes)))


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text
                                             or "out of memory" in text.lower())


@contextlib.contextmanager
def oom_guard(what: str, budget: float, **context: Any) -> Iterator[None]:
    """Turn an out-of-memory in the block into ``carl.resource.oom`` naming the budget to lower."""
    try:
        yield
    except Exception as exc:
        if not _is_oom(exc):
            raise
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass
        lower = max(MIN_BUDGET_MB, int(budget // 2))
        raise ResourceOOM(f"out of memory during {what} (logits budget {budget:g} MB)",
                          hint=f"Lower compute.logits_budget_mb (e.g. --set compute.logits_budget_mb={lower}), "
                               "or eval.n_samples / grpo.max_completion_length.",
                          context={"what": what, "logits_budget_mb": budget, **context}) from None

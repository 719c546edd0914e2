"""Reading logits (and token ids) from .npy / .npz / .safetensors files; safetensors is imported where needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ValidationError

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

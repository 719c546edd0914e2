"""Batch-mode output: JSON on stdout (one object, or JSON Lines flushed per line), humans and errors on stderr."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from engine.errors import CARLError


def _clean(o: Any) -> Any:
    """Make values JSON-safe: numpy scalars/arrays to Python, NaN/inf to null, paths to strings."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if o is None or isinstance(o, (str, int, bool)):
        return o
    if hasattr(o, "tolist"):  # numpy / torch
        return _clean(o.tolist())
    if hasattr(o, "item"):
        return _clean(o.item())
    return str(o)


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), separators=(",", ":"), ensure_ascii=False)


def emit(obj: Any) -> None:
    """One JSON object on stdout, one line, flushed."""
    sys.stdout.write(dumps(obj) + "\n")
    sys.stdout.flush()


def emit_error(exc: CARLError) -> None:
    sys.stderr.write(dumps(exc.to_dict()) + "\n")
    sys.stderr.flush()


def progress(message: str) -> None:
    """A human progress line on stderr."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()

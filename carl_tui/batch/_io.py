"""Batch-mode output: JSON on stdout (one object, or JSON Lines flushed per line), humans and errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from engine.errors import CARLError
from engine.jsonable import to_jsonable


_clean = to_jsonable


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

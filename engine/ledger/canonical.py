"""Canonical JSON: the exact bytes the ledger hashes and stores.

The canonical form of a JSON value is, byte for byte::

    json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

over the *normalised* value (see :func:`normalise`): only ``dict`` (string keys), ``list``, ``str``, ``int``,
``float`` (finite), ``bool`` and ``None``. Floats print as Python's ``repr`` (shortest round-trip form:
``0.1``, ``1.0``, ``1e-07``, ``1e+22``); non-finite floats are normalised to ``null`` before hashing;
strings are raw UTF-8 with only ``"``, ``\\`` and control characters (U+0000–U+001F) escaped (``\\n``,
``\\t``, ``\\u001f`` …); keys are sorted by code point.

For speed the bytes are produced by orjson (``OPT_SORT_KEYS``), which is byte-identical to the form above
except for floats between 1e-9 and 1e-4 in magnitude (orjson writes ``1e-7`` / ``0.000015`` where Python
writes ``1e-07`` / ``1.5e-05``) and integers beyond 64 bits (orjson refuses them). Those cases are detected and fall back to ``json.dumps``,
so the output is always exactly the documented form (a hypothesis test checks the two agree).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

import orjson

_OPTS = orjson.OPT_SORT_KEYS
# orjson's float form differs from Python's only for magnitudes 1e-9 … <1e-4: it writes "1e-7" where Python
# writes "1e-07" (one-digit negative exponents) and "0.000015" where Python writes "1.5e-05". Either pattern in
# orjson's output (it may also come from a string value: harmless) sends the value to json.dumps.
_DIFFERS = re.compile(rb"\de-[1-9](?![0-9])|(?<![0-9])0\.0000")


def _slow(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def fast_ok(out: bytes) -> bool:
    """Cheap pre-check of orjson output: False when it might differ from the documented form."""
    return b"e-" not in out and b"0.0000" not in out


def canonical(value: Any) -> bytes:
    """The canonical JSON bytes of an already-normalised value."""
    try:
        out = orjson.dumps(value, option=_OPTS)
    except (orjson.JSONEncodeError, TypeError):
        return _slow(value)
    if not fast_ok(out) and _DIFFERS.search(out):
        return _slow(value)
    return out


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _clean_str(s: str) -> str:
    try:
        s.encode("utf-8")
        return str(s)
    except UnicodeEncodeError:  # lone surrogates cannot be stored as UTF-8
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def normalise(value: Any) -> Any:
    """A plain-JSON copy of ``value``: dict keys to str, tuples/sets to lists, numpy/other scalars to Python,
    non-finite floats to None, anything else to its ``str``."""
    if isinstance(value, dict):
        return {_clean_str(str(k)): normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [normalise(v) for v in value]
    if value is None or isinstance(value, bool):
        return bool(value) if value is not None else None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, str):
        return _clean_str(value)
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return normalise(value.tolist())
    if hasattr(value, "item"):
        return normalise(value.item())
    return _clean_str(str(value))


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)

"""CARL_HOME: where carl keeps runs, the ledger, keys and chat sessions.

Layout (created on demand, never at import)::

    $CARL_HOME/            default ~/.carl
      runs/<run_id>/       one directory per run (frames.jsonl, meta.json, config.yaml, checkpoints/)
      ledger/              hash-chained JSONL segments
      keys/                Ed25519 signing keys (dir 0700, files 0600)
      cache/               built-in demo model, tokenizer and data
      sessions.db          chat sessions (SQLite)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import PermissionDenied, ValidationError


@dataclass(frozen=True)
class CarlHome:
    root: Path

    @classmethod
    def from_env(cls) -> "CarlHome":
        raw = os.environ.get("CARL_HOME")
        return cls(Path(raw).expanduser() if raw else Path.home() / ".carl")

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def sessions_db(self) -> Path:
        return self.root / "sessions.db"

    def ensure(self) -> "CarlHome":
        """Create the layout (keys/ with mode 0700). Raises ``carl.permission`` when not writable."""
        try:
            for d in (self.root, self.runs, self.ledger, self.cache):
                d.mkdir(parents=True, exist_ok=True)
            self.keys.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.keys, 0o700)
        except OSError as exc:
            raise PermissionDenied(f"CARL_HOME {self.root} is not writable: {exc.strerror}",
                                   hint="Set CARL_HOME to a writable directory.",
                                   context={"carl_home": str(self.root)}) from exc
        return self

    def run_dir(self, run_id: str) -> Path:
        """``runs/RUN_ID``; a run id that is not one (``../x``, ``a/b``, ``.``) is ``carl.run.invalid_id``."""
        return self.runs / validate_run_id(run_id)


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidRunId(ValidationError):
    code = "carl.run.invalid_id"
    default_hint = "A run id is letters, digits, '.', '_' and '-' (no '/', no '..'); list them with " \
                   "`carl --batch run list`."


def validate_run_id(run_id: Any) -> str:
    """The one check every path built from a run id goes through: a single safe path component, else
    ``carl.run.invalid_id`` (exit 2). Refuses traversal (``..``, ``/``, ``\\``), absolute paths, NUL, empty."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        shown = run_id if isinstance(run_id, str) else type(run_id).__name__
        raise InvalidRunId(f"not a run id: {shown!r}", context={"run": shown})
    return run_id


def carl_home() -> CarlHome:
    """The CARL_HOME in force now (read from the environment each call)."""
    return CarlHome.from_env()

"""Files under ``CARL_HOME/platform/``: JSON written atomically with mode 0600; a corrupt file is moved aside to
``<name>.corrupt-<ts>.json`` (quarantined) so it is never read twice and never silently lost."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from engine.errors import PermissionDenied
from engine.home import CarlHome


def platform_dir(home: CarlHome | None = None) -> Path:
    home = home or CarlHome.from_env()
    return home.root / "platform"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path``: a temp file (0600) in the same directory, fsync, rename, fsync dir."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise PermissionDenied(f"cannot write {path}: {exc.strerror}", hint="Set CARL_HOME to a writable directory.",
                               context={"path": str(path)}) from None


class Corrupt(Exception):
    """The file exists but is not what carl wrote; ``quarantined`` is where it was moved."""

    def __init__(self, reason: str, quarantined: Path | None):
        super().__init__(reason)
        self.reason = reason
        self.quarantined = quarantined


def quarantine(path: Path, now: float | None = None) -> Path | None:
    """Move ``path`` to ``<stem>.corrupt-<ts>.json`` beside it; the new path (None if it vanished)."""
    ts = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    dest = path.with_name(f"{path.stem}.corrupt-{ts}.json")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.stem}.corrupt-{ts}-{n}.json")
        n += 1
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        return None
    return dest


def read_json(path: Path, *, now: float | None = None) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when absent. Not a JSON object → quarantined, :class:`Corrupt`."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise PermissionDenied(f"cannot read {path}: {exc.strerror}", hint="Check the permissions of CARL_HOME.",
                               context={"path": str(path)}) from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise Corrupt("not a JSON object", quarantine(path, now))
    return data

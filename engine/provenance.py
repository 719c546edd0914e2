"""What reproduces a run, recorded in its ``run.start`` ledger block (issue 21): the library versions, carl's git
revision when it runs from a checkout, the dataset's fingerprint (and file hash or Hub revision when there is
one), the model's revision, the seed.

Cheap and offline: versions from package metadata, the git revision from ``git`` in carl's own source tree
(nothing when carl is an installed wheel, or git is absent), the dataset fingerprint a sha256 over the rows the
run actually trains and evaluates on, the model revision the Hub commit transformers resolved (None for a local
directory; the built-in tiny model names its build instead)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("carl-workbench", "torch", "transformers", "trl", "peft", "accelerate", "datasets")
_ROOT = Path(__file__).resolve().parent.parent


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out["carl" if name == "carl-workbench" else name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out["carl" if name == "carl-workbench" else name] = None
    return out


def git_revision(root: Path = _ROOT) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout carl runs from, or None (not a checkout, or no git)."""
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0
            else None}


def rows_fingerprint(rows: list[dict[str, Any]]) -> str:
    """sha256 over the rows in order (canonical JSON: sorted keys, no spaces)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_provenance(cfg, train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]],
                       cwd: Path | None = None) -> dict[str, Any]:
    src = cfg.dataset.source
    out: dict[str, Any] = {"source": src, "split": cfg.dataset.split, "train_rows": len(train_rows),
                           "eval_rows": len(eval_rows), "fingerprint": rows_fingerprint(train_rows + eval_rows)}
    local = Path(src).expanduser()
    if not local.is_absolute() and cwd is not None:
        local = Path(cwd) / local
    if not src.startswith("builtin:") and local.is_file():
        out["file_sha256"] = _file_sha256(local)
    return out


def model_provenance(cfg, model) -> dict[str, Any]:
    out: dict[str, Any] = {"name_or_path": cfg.model.name_or_path,
                           "revision": getattr(getattr(model, "config", None), "_commit_hash", None)}
    from engine import builtins

    if builtins.is_builtin(cfg.model.name_or_path):  # what its cached build records; provenance never builds it
        built = builtins.provenance(cfg.model.name_or_path)
        if built is not None:
            out["builtin"] = built
    return out


def run_start(cfg, model, train_rows, eval_rows, cwd: Path | None = None) -> dict[str, Any]:
    """The provenance fields of a ``run.start`` block."""
    return {"versions": versions(), "git": git_revision(), "seed": cfg.grpo.seed,
            "dataset_provenance": dataset_provenance(cfg, train_rows, eval_rows, cwd),
            "model_provenance": model_provenance(cfg, model)}
